"""`make demo`. Until the end-to-end issue lands this is the smallest real thing available:
the randomly initialised `tiny` preset run once over synthetic audio, every stage timed.

    python -m experiments.demo --out runs/demo [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.features import SAMPLE_RATE, log_mel
from data_pipelines.tokenizer import num_speech_frames
from mdm_jax.config import get_config
from mdm_jax.vocalnet import SPEECH_PLACEHOLDER, VocalNet, init_params


def synthetic_audio(seconds: float = 2.0) -> np.ndarray:
    """A gliding tone with a little noise: deterministic stand-in for a spoken question."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * t) * t)
    return (tone + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    cfg = get_config("tiny", args.overrides)
    timings = {}

    def timed(name, fn, *a):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*a))
        timings[name] = round(time.perf_counter() - start, 3)
        return out

    model = VocalNet(cfg)
    params = timed("init_s", init_params, cfg, jax.random.key(0))
    mel = log_mel(synthetic_audio(), cfg.encoder.num_mel_bins)[None]  # (1, n_mels, frames)
    n_speech = num_speech_frames(mel.shape[-1], cfg.adaptor.downsample)
    encode = jax.jit(lambda p, m: model.apply({"params": p}, m, method=VocalNet.encode_speech))
    speech = timed("encode_speech_s", encode, params, jnp.asarray(mel))

    ids = jnp.array([[1] + [SPEECH_PLACEHOLDER] * n_speech + [2, 3]])
    llm = jax.jit(lambda p, i, s: model.apply({"params": p}, i, s, method=VocalNet.llm_forward))
    text_logits, hidden, _ = timed("llm_forward_s", llm, params, ids, speech)

    sd = cfg.speech_decoder
    tokens = jnp.array([[sd.sos_id] + [sd.mask_id] * sd.block_size])
    talk = jax.jit(lambda p, h, t: model.apply({"params": p}, h, t, method=VocalNet.speech_decode))
    speech_logits, _, _ = timed("speech_decode_s", talk, params, hidden, tokens)

    report = {
        "what": "forward pass of the randomly initialised tiny preset on synthetic audio (no training yet)",
        "device": str(jax.devices()[0]),
        "mel_frames": int(mel.shape[-1]), "speech_embeddings": list(speech.shape),
        "text_logits": list(text_logits.shape), "speech_logits": list(speech_logits.shape),
        "finite": bool(np.isfinite(np.asarray(speech_logits)).all()), "timings": timings,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out / 'report.json'}")


if __name__ == "__main__":
    main()
