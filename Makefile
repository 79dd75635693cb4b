# RLHF from scratch: one local virtual environment (.venv) for the lessons, the tests and bench.
#
#   make lab     set up (first time only) and open JupyterLab at lesson 00
#   make test    set up (first time only) and run every test, notebooks included
#   make setup   the environment only          make bench   time every lesson
#   make doctor  check this machine            make build   regenerate lessons/ from solutions/

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch goes in first so that the rest of the install keeps it. The course is tested up to
# 2.13; machines with a local wheel cache of the CPU build take it from there. On Linux without
# an NVIDIA GPU, save ~3 GB of CUDA libraries with:
#   make setup TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch>=2.4,<2.14
TORCH_INDEX ?=
KERNEL := rlhf-course
# Tests and builds never touch a model hub.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup lab test bench doctor build check clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes (or the environment is missing).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "The course needs Python 3.11 or newer; this is " + sys.version.split()[0] + ". Install it and run: make PYTHON=python3.11 setup")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (RLHF course)" >/dev/null
	@touch $(STAMP)
	@echo "Environment ready in $(VENV). Next: make lab (or make test)."

lab: setup
	$(VENV)/bin/jupyter lab lessons/00_start_here.ipynb

test: setup
	$(OFFLINE) $(PY) -m pytest --nbval tests lessons solutions

bench: setup
	$(OFFLINE) $(PY) -m course bench

doctor: setup
	$(PY) -m course doctor

build: setup
	$(OFFLINE) $(PY) -m course build

check: setup
	$(PY) -m course build --check

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
