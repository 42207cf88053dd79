# Two entry points: `make demo` (the quickstart run) and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo compare test lint env-speed clean

$(STAMP):
	$(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/asyncvla train configs/quickstart.yaml --run-dir runs/quickstart-$$(date +%Y%m%d-%H%M%S)

# Sync vs async on the quickstart from one SFT checkpoint (about 25 min on 2 cores).
compare: $(STAMP)
	$(BIN)/asyncvla compare configs/quickstart.yaml --out runs/compare-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest -q -x

lint: $(STAMP)
	$(BIN)/ruff check asyncvla tests && $(BIN)/ruff format --check asyncvla tests

env-speed: $(STAMP)
	taskset -c 0 $(BIN)/asyncvla env-speed --num-envs 16 --chunk-size 4

clean:
	rm -rf $(VENV) runs
