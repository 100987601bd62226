"""`python -m benchmarks.gateway_process`: `apron serve` with its configuration from APRON_* variables
only (serving/config.py), so the benchmark can run it, plain or under pyinstrument, in its own process."""

from serving.config import ServingConfig
from serving.runtime import serve

if __name__ == "__main__":
    serve(ServingConfig.from_env())
