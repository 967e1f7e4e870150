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

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	@$(BIN)/dvc config --local core.analytics false >/dev/null 2>&1 || true
	@touch $@

# The whole pipeline on the demo corpus, through the Prefect flow, with training bounded in time
# (each member DEMO_TRAIN_MINUTES, the vocoder DEMO_VOCODER_MINUTES) so it ends on a 2-core CPU.
DEMO_TRAIN_MINUTES ?= 8
DEMO_VOCODER_MINUTES ?= 4
DEMO_EVAL_UTTERANCES ?= 36
demo: setup
	$(BIN)/polyvox run -S train.max_minutes=$(DEMO_TRAIN_MINUTES) -S vocoder.max_minutes=$(DEMO_VOCODER_MINUTES) \
		-S vocoder.max_steps=2400 -S evaluate.max_utterances=$(DEMO_EVAL_UTTERANCES)
	@echo "Report:    reports/evaluate/report.html (candidate vs champion vs the real recordings, with audio)"
	@$(BIN)/python -c "import json; d = json.load(open('reports/promote.json')); print('Champion: ', 'version', d['version'], 'promoted to models/champion/' if d['promoted'] else 'refused by the gate (reasons: reports/promote.json)')"
	@echo "Serve it:  $(BIN)/polyvox serve        → http://127.0.0.1:8000 (POST /synthesize, GET /voices)"
	@echo "Dashboard: $(BIN)/polyvox dashboard    → http://127.0.0.1:8050"

test: setup test-deps
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; fi; exit $$rc

benchmarks: setup
	$(BIN)/python benchmarks/prepare_kathleen.py
	$(BIN)/python benchmarks/data_stages_kathleen.py
	$(BIN)/python benchmarks/onnx_speed.py
	$(BIN)/python benchmarks/serve_latency.py

clean:
	rm -rf $(VENV) data/raw
