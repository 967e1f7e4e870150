# Two commands set up a fresh machine:  make demo  |  make test
# Both install what is missing (Debian packages, a .venv with pinned dependencies) and are idempotent.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

# Offline engines for the demo corpus and the text front-end.
DEB_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox

# No telemetry from any tool (this machine reaches only the package registries).
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup system-deps venv demo test benchmarks clean

setup: system-deps venv

system-deps:
	@scripts/install-system-deps.sh $(DEB_PACKAGES)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	@$(BIN)/dvc config --local core.analytics false >/dev/null 2>&1 || true
	@touch $@

# The whole pipeline on the demo corpus, through the Prefect flow, with training bounded in time
# (each member DEMO_TRAIN_MINUTES, the vocoder DEMO_VOCODER_MINUTES) so it ends on a 2-core CPU.
DEMO_TRAIN_MINUTES ?= 8
DEMO_VOCODER_MINUTES ?= 4
demo: setup
	$(BIN)/polyvox run -S train.max_minutes=$(DEMO_TRAIN_MINUTES) -S vocoder.max_minutes=$(DEMO_VOCODER_MINUTES) \
		-S vocoder.max_steps=2400
	@echo "Outputs: data/raw (manifest + audio), data/validated (accepted, quarantine, Data Docs),"
	@echo "         data/clean (clean audio + phonemes), data/features (mel/F0/energy, splits, stats),"
	@echo "         models/<member>/ (acoustic model checkpoints, metrics.csv), models/vocoder/"

test: setup
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; exit $$rc

benchmarks: setup
	$(BIN)/python benchmarks/prepare_kathleen.py
	$(BIN)/python benchmarks/data_stages_kathleen.py

clean:
	rm -rf $(VENV) data/raw
