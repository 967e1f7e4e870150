# Two commands set up a fresh machine:  make demo  |  make test
# Both install what is missing (Debian packages, a .venv with pinned dependencies) and are idempotent.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

# Offline engines for the demo corpus and the text front-end.
DEB_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox
# Only the tests need these: a headless browser that loads the dashboard.
TEST_DEB_PACKAGES := chromium chromium-driver

# No telemetry from any tool (this machine reaches only the package registries).
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup system-deps test-deps venv demo test benchmarks clean

setup: system-deps venv

system-deps:
	@scripts/install-system-deps.sh $(DEB_PACKAGES)

test-deps:
	@scripts/install-system-deps.sh $(TEST_DEB_PACKAGES)

venv: $(VENV)/.installed

# --no-cache-dir: on a fresh machine pip's cache would only hold a second copy of every wheel it
# downloaded (gigabytes beside torch); stop 44's CI ran out of disk during this install.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --disable-pip-version-check -c requirements.lock -e ".[dev]"
	@$(BIN)/dvc config --local core.analytics false >/dev/null 2>&1 || true
	@touch $@

# The whole pipeline on the demo corpus, through the Prefect flow, with params.yaml as it is: the
# recipe there (two demo voices, one conversion member trained for train.max_minutes) is sized for
# a 2-core CPU (benchmarks/README.md has the run's minutes), and it is the same voice `dvc repro`
# and the nightly deployment train.
demo: setup
	$(BIN)/polyvox run
	@$(BIN)/python scripts/demo_summary.py

test: setup test-deps
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; exit $$rc

benchmarks: setup
	$(BIN)/python benchmarks/prepare_kathleen.py
	$(BIN)/python benchmarks/data_stages_kathleen.py
	$(BIN)/python benchmarks/onnx_speed.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/dvc_noop.py
	$(BIN)/python benchmarks/piper_session.py

clean:
	rm -rf $(VENV) data/raw
