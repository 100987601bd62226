# The README's commands. Everything installs from nothing via scripts/install.sh
# (+ scripts/install_system.sh for Debian's prometheus/promtool, which the deploy tests run).
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
LOADTEST_HOST ?= 127.0.0.1:50051
LOADTEST_ARGS ?=

.PHONY: install system serve test lint proto proto-check results benchmarks loadtest

$(PY): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(PY)

install: $(PY)

system:
	bash scripts/install_system.sh

serve: $(PY)
	$(VENV)/bin/apron serve

lint: $(PY)
	$(VENV)/bin/ruff check .

proto: $(PY)
	bash scripts/gen_proto.sh

proto-check: $(PY)
	bash scripts/check_proto.sh

test: $(PY) system lint proto-check
	$(PY) -m pytest -q

# Trains and evaluates all six models on lastfm-2k and ml-1m-implicit (~30 min on 2 CPUs).
results: $(PY)
	$(PY) -m training.results --output RESULTS.md

benchmarks: $(PY)
	$(PY) -m benchmarks.run --output BENCHMARKS.md

# Against a gateway you started (make serve); writes loadtests/out/. Exits non-zero on broken thresholds.
loadtest: $(PY)
	$(VENV)/bin/locust --config loadtests/locust.conf --host $(LOADTEST_HOST) $(LOADTEST_ARGS)
