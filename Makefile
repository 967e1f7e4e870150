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

# The whole pipeline on the demo corpus, through the Prefect flow, sized for ~30 minutes on a 2-core
# CPU: two teacher voices (one female, one male) reading 600 prompts each — on the measured runs,
# fewer voices with more distinct text each is what most brings the word error rate down at these
# step counts (benchmarks/README.md, "What learns fastest") — and one compact member (128 channels,
# kernel 3, 3 + 3 layers, dropout 0.2 on the token-level modules only, phone positions: a held-out
# WER of 0.47 against 0.55 without the dropout) for DEMO_TRAIN_STEPS steps (bounded by
# DEMO_TRAIN_MINUTES) on a cosine schedule peaking at 0.003 — at 980 steps, held-out WER 0.336
# against 0.375 at 0.002; 0.004 trained worse — the neural vocoder for DEMO_VOCODER_MINUTES, and
# DEMO_EVAL_UTTERANCES held-out sentences scored. A real corpus uses params.yaml's own members
# (two, for the ensemble); `dvc repro` builds params.yaml's six-voice demo corpus.
DEMO_TRAIN_STEPS ?= 1050
DEMO_TRAIN_MINUTES ?= 16
DEMO_VOCODER_MINUTES ?= 4
DEMO_EVAL_UTTERANCES ?= 36
DEMO_VOICES := demo.voices=[flite_slt, flite_rms]
DEMO_TAKES := 600
DEMO_MEMBER := train.members=[{name: demo, seed: 1234, conditioning: audio+image, variant: {channels: 128, kernel_size: 3, text_layers: 3, decoder_layers: 3, postnet_layers: 3, dropout: 0.0, token_dropout: 0.2, phone_positions: true}}]
demo: setup
	$(BIN)/polyvox run -S '$(DEMO_VOICES)' -S demo.utterances_per_speaker=$(DEMO_TAKES) \
		-S '$(DEMO_MEMBER)' -S train.batch_size=12 -S train.lr=0.003 -S train.warmup_steps=150 \
		-S train.lr_schedule=cosine -S train.max_steps=$(DEMO_TRAIN_STEPS) -S train.max_minutes=$(DEMO_TRAIN_MINUTES) \
		-S vocoder.max_minutes=$(DEMO_VOCODER_MINUTES) -S vocoder.max_steps=2400 -S evaluate.max_utterances=$(DEMO_EVAL_UTTERANCES)
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

clean:
	rm -rf $(VENV) data/raw
