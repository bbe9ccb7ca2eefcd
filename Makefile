# The two commands of the quick start: `make demo` and `make test`. Both create .venv when missing and install what
# they need; reinstalling happens only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of this release installs from local disk here; letting pip pick torch itself would pull a
# multi-GB CUDA build. Override on a GPU machine, e.g. `make demo TORCH_SPEC='torch==2.13.0'` with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lumi-installed

export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# `make demo SEED=7`: the world's seed and every training seed (output in out/demo-seed7; SEED=0 is out/demo).
SEED ?= 0

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash runs/demo.sh --seed "$(SEED)"

test: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf out/demo out/demo-seed*
