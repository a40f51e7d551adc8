# Every target creates .venv at the repo root on first use and reuses it afterwards.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[data,parity,dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check mdm_jax data_pipelines experiments tests
	$(PY) -m pytest -q --durations=15

demo: $(STAMP)
	$(PY) -m experiments.demo --out runs/demo

bench: $(STAMP)
	$(PY) -m experiments.bench_decode --config tiny --out runs/bench/decode_tiny.json
	$(PY) -m experiments.bench_train --out runs/bench/train.json

lint: $(STAMP)
	$(PY) -m ruff check mdm_jax data_pipelines experiments tests
