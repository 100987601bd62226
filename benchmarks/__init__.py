"""Benchmarks of the scorer and the gateway; `python -m benchmarks.run --output BENCHMARKS.md`."""
