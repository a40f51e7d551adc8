# Every target creates .venv at the repo root on first use and reuses it afterwards.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Exact versions the whole suite passed with; `make setup` installs them (see README to refresh).
LOCK := constraints.txt

.PHONY: setup test demo bench lint lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[data,parity,dev,serve]'
	$(PY) -m pip install -q --no-deps -c $(LOCK) cosyvoice2-eu  # CosyVoice2's reference code for parity tests
	$(PY) -m pip install -q --no-deps -c $(LOCK) s3tokenizer  # its speech tokenizer's reference (needs no torchaudio here)
	$(PY) -m pip install -q --no-deps -c $(LOCK) funasr  # CAM++'s reference (campplus.onnx's model); model files only
	$(PY) -m pip install -q -c $(LOCK) libtpu  # the TPU compiler, pinned to the locked jax: compiles for TPU slices here
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check mdm_jax data_pipelines experiments tests
	$(PY) -m pytest -q --durations=15

demo: $(STAMP)
	$(PY) -m experiments.demo --out runs/demo

bench: $(STAMP)
	$(PY) -m experiments.bench_decode --configs tiny,tiny-vocalnet --out runs/bench/decode_tiny.json
	$(PY) -m experiments.bench_train --out runs/bench/train.json

lint: $(STAMP)
	$(PY) -m ruff check mdm_jax data_pipelines experiments tests

# lock: rewrite $(LOCK) from the current .venv (pip freeze minus mdm-jax itself); run after the suite passes.
lock:
	test -x $(PY) || { echo "no $(VENV): run make setup first" >&2; exit 1; }
	{ sed -n '1,2p' $(LOCK); $(PY) -m pip freeze --exclude mdm-jax; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
