# `make demo` and `make test` do all the set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo and the tests use tiny local models only and never reach the Hugging Face hub.
export HF_HUB_OFFLINE := 1

LOCKTOOL := .lock-tool

.PHONY: demo test test-slow test-faults test-all venv lock image clean bench

venv: $(STAMP)

# requirements.lock holds every package at the version CI tested (torch 2.13.0: a CPU build is on
# disk here), so a fresh machine installs exactly that; polymodal itself goes on top, editable.
$(STAMP): pyproject.toml requirements.lock
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Regenerate requirements.lock from pyproject.toml (extras test and gpu) with pip-tools;
# constraints.txt pins this machine's torch and the s3fs/aiobotocore/boto3 trio, which must move
# together. The lock names torch without its local build tag, so a CUDA build of the same
# release satisfies it too (the GPU image), and leaves polymodal itself out.
lock:
	test -x $(LOCKTOOL)/bin/pip-compile || ($(PY) -m venv $(LOCKTOOL) && $(LOCKTOOL)/bin/pip install -q pip-tools)
	$(LOCKTOOL)/bin/pip-compile -q --extra test --extra gpu --strip-extras --no-emit-index-url \
		--no-emit-find-links -c constraints.txt -o requirements.lock pyproject.toml
	sed -i -e '/^polymodal @ /,+1d' -e 's/^torch==\([0-9.]*\)+[a-z0-9]*/torch==\1/' requirements.lock

demo: $(STAMP)
	$(BIN)/python jobs/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu and not faults" -q --durations=20

# the learning runs that take minutes (LLaViLo, ChefFusion and VIOLET through Ray Train + DeepSpeed, their Tune sweeps)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow and not gpu and not faults" -q --durations=20

# injected faults that take seconds to minutes each (S3 restarted under a read, a killed Train worker
# and Tune driver, killed, stalled and unloadable Serve replicas, long Serve fuzzing)
test-faults: $(STAMP)
	$(BIN)/python -m pytest -m "faults and not gpu" -q --durations=20

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20

bench: $(STAMP)
	$(BIN)/python bench/wander_fusion.py
	$(BIN)/python bench/ridge.py
	$(BIN)/python bench/llavilo_step.py --size small --top-n 4
	$(BIN)/python bench/sd_generate.py --size tiny
	$(BIN)/python bench/violet_ingest.py
	$(BIN)/python bench/violet_step.py --size small
	$(BIN)/python bench/serve_latency.py
	$(BIN)/python bench/serve_soak.py
	$(BIN)/python bench/train_loop.py

# Container images: docker/Dockerfile's targets, tagged as k8s/ names them (<version>-cpu|gpu).
# Needs BuildKit (Docker 23+) or ENGINE=podman; IMAGE_BUILD_FLAGS passes --build-arg etc.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= ghcr.io/your-org/polymodal
ENGINE ?= docker
IMAGE_BUILD_FLAGS ?=

image:
	$(ENGINE) build $(IMAGE_BUILD_FLAGS) -f docker/Dockerfile --target cpu -t $(IMAGE):$(VERSION)-cpu .
	$(ENGINE) build $(IMAGE_BUILD_FLAGS) -f docker/Dockerfile --target gpu -t $(IMAGE):$(VERSION)-gpu .

clean:
	rm -rf $(VENV) $(LOCKTOOL) demo_out runs .pytest_cache
