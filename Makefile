# The README's commands. Everything installs from nothing via scripts/install.sh
# (+ scripts/install_system.sh for Debian's prometheus/promtool, which the deploy tests run).
VENV := .venv
PY := $(VENV)/bin/python
# what `make install` leaves when it is done: a file of the project's own, not $(PY), which is a
# symlink to the system interpreter (touching it would follow the link: a system file's timestamp,
# and Permission denied for anyone but root)
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
LOADTEST_HOST ?= 127.0.0.1:50051
LOADTEST_DATASET ?= artifacts/data/demo
LOADTEST_ARGS ?=

.PHONY: install system serve test lint proto proto-check results benchmarks gpu-wheels gpu-check gpu-land loadtest deploy-secrets k8s-secrets model-archive

$(INSTALLED): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(INSTALLED)

install: $(INSTALLED)

system:
	bash scripts/install_system.sh

serve: $(INSTALLED)
	$(VENV)/bin/apron serve --http-port 8080

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .

proto: $(INSTALLED)
	bash scripts/gen_proto.sh

proto-check: $(INSTALLED)
	bash scripts/check_proto.sh

# -v: each test is named as it starts, so a crash of the pytest process itself (a native fault, which
# pytest cannot report: its faulthandler prints only the threads' Python stacks) shows the test it was in
test: $(INSTALLED) system lint proto-check
	$(PY) -m pytest -v

# Trains and evaluates all six models on lastfm-2k and ml-1m-implicit (~30 min on 2 CPUs).
results: $(INSTALLED)
	$(PY) -m training.results --output RESULTS.md

benchmarks: $(INSTALLED)
	$(PY) -m benchmarks.run --output BENCHMARKS.md

# The GPU check (benchmarks/README.md). Here: `make gpu-wheels` builds the git-ignored folders a CUDA
# machine without network needs (wheelhouse/: the wheels it lacks, ~20 MiB; gpu_carry/: gpu_ceiling.py
# from ../shared/perf). There: `make gpu-check` (its own python3, no venv; 8 minutes at most) writes
# GPU_OUT/gpu_check.json and .md. Here again: `make gpu-land` keeps that record in docs/results/ and
# writes its figures into BENCHMARKS.md.
GPU_PY ?= python3
GPU_OUT ?= benchmarks/out/gpu-check
gpu-wheels: $(INSTALLED)
	$(PY) -m benchmarks.gpu_check wheels

gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check run --out $(GPU_OUT)

gpu-land: $(INSTALLED)
	$(PY) -m benchmarks.gpu_check land $(GPU_OUT)/gpu_check.json

# Against a gateway you started (by default the demo of `make serve`, whose dataset's test users it
# simulates, with a service token signed by the development secret); starts nothing itself.
# Writes loadtests/out/; exits non-zero when a threshold breaks, e.g.
#   make loadtest LOADTEST_ARGS="--users 64 --run-time 2m --max-p99-ms 50"
loadtest: $(INSTALLED)
	$(VENV)/bin/locust --config loadtests/locust.conf --host $(LOADTEST_HOST) --dataset $(LOADTEST_DATASET) \
		--token "$$($(VENV)/bin/apron token --sub loadtest --role service)" $(LOADTEST_ARGS)

# ./model_repository as one archive for a model volume (deploy/fill_models.py --url; the Kubernetes
# Job in deploy/k8s/model-repository.yaml): prints its path and sha256.
model-archive: $(INSTALLED)
	$(PY) deploy/fill_models.py --pack model_repository --archive artifacts/apron-model-repository.tar.gz

# Secrets for compose / Kubernetes, generated here at deploy time, never committed (deploy/secrets/):
# a JWT secret, a private CA and the gateway's TLS certificate, Grafana's admin password.
deploy-secrets: $(INSTALLED)
	$(PY) deploy/make_secrets.py --out deploy/secrets

# The same files as Kubernetes Secrets (namespace apron; needs kubectl and a cluster). The gateway
# verifies tokens with a public key there (apron-jwt: jwt_public_key.pem, from your token issuer).
k8s-secrets: deploy-secrets
	kubectl -n apron create secret tls apron-tls --cert=deploy/secrets/tls.crt --key=deploy/secrets/tls.key \
		--dry-run=client -o yaml | kubectl apply -f -
	kubectl -n apron create secret generic apron-redis --from-file=password=deploy/secrets/redis_password \
		--dry-run=client -o yaml | kubectl apply -f -
	kubectl -n apron create secret generic apron-redis-tls --from-file=tls.crt=deploy/secrets/redis.crt \
		--from-file=tls.key=deploy/secrets/redis.key --from-file=ca.crt=deploy/secrets/ca.crt \
		--dry-run=client -o yaml | kubectl apply -f -
