"""Small helpers every stage shares: the user-facing error, atomic file writes, free ports.

Nothing here imports a stage (training, export, serving) or a heavy library, so each stage, the
benchmarks and the tests can import it without pulling torch or gRPC in.
"""
