# Two set-up commands: `make demo` (install + run the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.mllm-installed
# torch first, pinned to the build this machine has (a plain `torch` would pull the CUDA wheels);
# torchvision 0.28.0 matches torch 2.13.0 and is only needed by timm/open_clip.
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
DEMO_OUT ?= demo_out

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed's CPU shm op is compiled on first use; a cache per venv keeps two checkouts (or a killed build's
# stale lock) from blocking each other's multi-process runs
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: venv demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[test,tensorboard,gen,serve,demo]"
	$(PY) scripts/cpu_torchvision_shim.py
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mllm demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/anyres_preprocess.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)
