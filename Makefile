# The README's commands. Everything installs from nothing via scripts/install.sh.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install serve test lint proto proto-check results benchmarks loadtest

$(PY): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(PY)

install: $(PY)

serve: $(PY)
	$(VENV)/bin/apron serve

lint: $(PY)
	$(VENV)/bin/ruff check .

test: $(PY) lint
	$(PY) -m pytest -q

results: $(PY)
	$(PY) -m training.results --output RESULTS.md
