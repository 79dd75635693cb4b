# RLHF from scratch: one local virtual environment (.venv) for the lessons, the tests and bench.
#
#   make lab     set up (first time only) and open JupyterLab at lesson 00
#   make test    set up (first time only) and run every test, notebooks included
#   make setup   the environment only          make bench   time every lesson
#   make doctor  check this machine            make build   regenerate lessons/ from solutions/
#   make dry-run every stage at the gpu profile's shapes, a few steps (80 s; make test does it)
#
# Slower checks for contributors, not run by CI:
#   make test-portable  the notebooks on a simulated other machine (generic kernels, one thread),
#                       from an empty artifacts folder in reverse lesson order, then again
#   make test-latest    the whole suite on the newest release of every dependency (.venv-latest)
#   make lock           rewrite requirements.lock from the newest releases (after test-latest passes)
#   make test-scale     scale/sky/*.yaml through SkyPilot's own parser, in its own environment (.venv-sky)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every package comes at the version in requirements.lock (pip constraints: see course/lock.py).
LOCK := requirements.lock
# torch goes in first so that the rest of the install keeps it. The lock holds one release; a
# machine with a local wheel of its CPU build takes that. On Linux without an NVIDIA GPU, save
# ~3 GB of CUDA libraries with:
#   make setup TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
# TORCH_SPEC bounds the torch that `make lock` may move to.
TORCH_SPEC ?= torch>=2.9,<2.14
TORCH_INDEX ?=
# Tests and builds never touch a model hub.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

# The simulated other machine of `make test-portable`: PyTorch's generic (non-vector) kernels
# and one thread change float rounding the way another CPU, OS or thread count would.
PORTABLE_ENV := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PORTABLE_ARTIFACTS := .portable-artifacts
LESSONS_REVERSED = $(shell ls lessons/*.ipynb | sort -r)
LATEST_VENV := .venv-latest
LATEST_TORCH_SPEC ?= torch

WHEELS ?=
PLATFORMS ?=

.PHONY: dry-run setup lab test test-portable test-latest latest-env lock wheelhouse test-wheelhouse site test-site test-scale bench doctor build check clean

setup: $(STAMP)

# Re-runs only when pyproject.toml or the lock changes (or the environment is missing).
# The recipe is course/environment.py, shared with `python -m course setup` (no make needed).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m course setup --force --torch-index "$(TORCH_INDEX)" $(if $(WHEELS),--wheels "$(WHEELS)")

# Workshops: download every locked wheel once (PLATFORMS="manylinux_2_28_x86_64 win_amd64 ..."
# for other machines; default: this one), then `make setup WHEELS=wheelhouse` with no network.
wheelhouse:
	$(PYTHON) -m course wheelhouse -o wheelhouse $(foreach p,$(PLATFORMS),--platform $(p))

# The offline install, proved: a fresh environment from the wheelhouse alone, in a network
# namespace with no network at all (needs root for unshare), then the course's doctor.
test-wheelhouse: wheelhouse
	rm -rf .venv-wheelhouse
	unshare --net $(PYTHON) -c 'import course.environment as e, pathlib; e.setup(pathlib.Path(".venv-wheelhouse"), wheels=pathlib.Path("wheelhouse"))'
	unshare --net .venv-wheelhouse/bin/python -m course doctor

# As root, on a machine with no display, or over SSH: see course/lab.py. LAB_ARGS="--ip 0.0.0.0"
# listens on every address (the default is this machine only).
lab: setup
	$(PY) -m course lab $(LAB_ARGS)

# What `make test` runs; TEST_PATHS=tests runs the unit tests alone (scale/sky/test-gpu.yaml does).
TEST_PATHS ?= tests lessons solutions
test: setup
	$(OFFLINE) $(PY) -m pytest --nbval $(TEST_PATHS)

# Not in CI (about 17 minutes on 2 cores): run it before changing what a notebook prints. Both
# runs always run; the target fails if either did.
PORTABLE_PYTEST = $(OFFLINE) $(PORTABLE_ENV) RLHF_ARTIFACTS=$(CURDIR)/$(PORTABLE_ARTIFACTS) \
	$(PY) -m pytest --nbval --nbval-cell-timeout=3600 -p no:cacheprovider $(LESSONS_REVERSED)
test-portable: setup
	rm -rf $(PORTABLE_ARTIFACTS)
	@echo "run 1 of 2: empty artifacts folder, lessons in reverse order, generic kernels, one thread"; \
	$(PORTABLE_PYTEST); first=$$?; \
	echo "run 2 of 2: the same, with the artifacts of run 1"; \
	$(PORTABLE_PYTEST); second=$$?; \
	echo "test-portable: run 1 exit $$first, run 2 exit $$second"; test $$first -eq 0 -a $$second -eq 0

# A fresh environment of the newest releases, ignoring the lock, and its own artifacts folder.
latest-env:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m course setup --force --venv $(LATEST_VENV) --latest --torch-spec "$(LATEST_TORCH_SPEC)" \
		--torch-index "$(TORCH_INDEX)"
	@$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	@echo "Newest releases (differences from $(LOCK)):"
	@$(LATEST_VENV)/bin/python -m course.lock --compare $(LATEST_VENV)/versions.txt

test-latest: latest-env
	$(OFFLINE) RLHF_UNLOCKED=1 RLHF_ARTIFACTS=$(CURDIR)/$(LATEST_VENV)/artifacts \
		$(LATEST_VENV)/bin/python -m pytest --nbval -p no:cacheprovider tests lessons solutions

# Rewrites the lock from the newest releases, torch held within TORCH_SPEC. Then run make test.
lock:
	$(MAKE) latest-env LATEST_VENV=.venv-lock LATEST_TORCH_SPEC="$(TORCH_SPEC)"
	.venv-lock/bin/python -m course.lock < .venv-lock/versions.txt > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock
	@echo "$(LOCK) updated: review the diff, run make test, and commit it."

# The executed notebooks as a website in site/ (open site/index.html; no server needed).
site: setup
	$(PY) -m course site -o site

# The site's browser test, with Chromium required (apt-get install chromium).
test-site: setup
	RLHF_REQUIRE_BROWSER=1 $(OFFLINE) $(PY) -m pytest -p no:cacheprovider tests/test_site.py

# SkyPilot's parser on scale/sky/*.yaml (the accelerate configs are checked by make test). SkyPilot
# is heavy and never enters the course's environment: it lives in .venv-sky, at the release in
# scale/sky/requirements.txt. Offline after the install; HOME is a folder inside .venv-sky, so no
# cloud credentials are read and ~/.sky is left alone. The root conftest.py and pytest options
# need the course's environment: --noconftest and an empty addopts leave them out.
SKY_VENV := .venv-sky
$(SKY_VENV)/.installed: scale/sky/requirements.txt
	rm -rf $(SKY_VENV)
	$(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install --quiet -r scale/sky/requirements.txt
	touch $@

test-scale: $(SKY_VENV)/.installed
	mkdir -p $(SKY_VENV)/home
	HOME=$(CURDIR)/$(SKY_VENV)/home $(SKY_VENV)/bin/python -m pytest -p no:cacheprovider --noconftest -o addopts= \
		-W ignore::DeprecationWarning -v \
		tests/test_scale.py -k skypilot

bench: setup
	$(OFFLINE) $(PY) -m course bench

# course/dry_run.py: catches shape, context-length and configuration errors of a profile before a GPU
# is paid for. DRY_RUN_ARGS="--profile cpu" or "--set gpt.n_layer=12" tries other shapes.
dry-run: setup
	$(OFFLINE) $(PY) -m course dry-run $(DRY_RUN_ARGS)

doctor: setup
	$(PY) -m course doctor

build: setup
	$(OFFLINE) $(PY) -m course build

check: setup
	$(PY) -m course build --check

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(SKY_VENV) .venv-wheelhouse $(PORTABLE_ARTIFACTS) *.egg-info .pytest_cache
