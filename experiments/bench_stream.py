"""Serving throughput and first-packet latency of batched streaming speech-to-speech
(`decode.streaming.stream_batch`): questions/s and the first audio block's latency at several batch
sizes, measured in one run on one model.

    python -m experiments.bench_stream --config tiny --batches 1,4,16 --out runs/bench/stream.json

Questions are random log-mels of 2-4 s (ragged) with their placeholder prompts; random weights, so
each answer runs to --max-text-tokens / --max-blocks (no end of text): every batch size does the same
work per question. Audio goes through a CosyVoice2 token2wav at reduced sizes with random weights
(`--token2wav DIR` for a converted one). Each batch size runs once untimed (compiles), then timed:
questions/s = batch / wall seconds of the whole batch; first packet = median over the batch of the
seconds from the call to a question's first non-empty audio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from data_pipelines.tokenizer import SPEECH_PLACEHOLDER, num_speech_frames
from experiments.bench_token2wav import SMALL
from experiments.json_out import write_json
from mdm_jax.config.model import get_config
from mdm_jax.decode.streaming import stream_batch
from mdm_jax.model.vocalnet import random_params
from mdm_jax.vocoder import cosyvoice_flow, hift
from mdm_jax.vocoder.cosyvoice2 import CosyVoice2Token2Wav
from mdm_jax.vocoder.load import load_token2wav


def questions(cfg, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        frames = int(rng.integers(200, 400))  # 2-4 s at 100 Hz
        mel = rng.standard_normal((cfg.encoder.num_mel_bins, frames)).astype(np.float32)
        out.append((mel, [SPEECH_PLACEHOLDER] * num_speech_frames(frames, cfg.adaptor.downsample)))
    return out


def run(params, cfg, batch, token2wav, max_text_tokens: int, max_blocks: int) -> dict:
    start, first = time.perf_counter(), {}
    for chunks in stream_batch(params, cfg, [m for m, _ in batch], [p for _, p in batch], eos_ids=set(),
                               max_text_tokens=max_text_tokens, max_blocks=max_blocks, token2wav=token2wav):
        for c in chunks:
            if c.row not in first and (c.audio is None or len(c.audio)):
                first[c.row] = time.perf_counter() - start
    seconds = time.perf_counter() - start
    return {"batch": len(batch), "seconds": seconds, "questions_per_s": len(batch) / seconds,
            "first_packet_s": statistics.median(first.values()) if first else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--max-text-tokens", type=int, default=16)
    parser.add_argument("--max-blocks", type=int, default=4)
    parser.add_argument("--token2wav", help="a converted CosyVoice2 folder (default: reduced sizes, random weights); "
                                            "'none': units only (the first packet is then the first block's units)")
    parser.add_argument("--out", default="runs/bench/stream.json")
    parser.add_argument("overrides", nargs="*", help="model config overrides, e.g. dtype=bfloat16")
    args = parser.parse_args(argv)
    cfg = get_config(args.config, args.overrides)
    params = random_params(cfg)
    if args.token2wav == "none":
        t2w = None
    elif args.token2wav:
        t2w = load_token2wav(args.token2wav)
    else:
        flow_cfg, hift_cfg = SMALL
        t2w = CosyVoice2Token2Wav(cosyvoice_flow.init_params(flow_cfg), flow_cfg, hift.init_params(hift_cfg),
                                  hift_cfg, np.zeros(flow_cfg.spk_embed_dim, np.float32))
    rows = []
    for b in map(int, args.batches.split(",")):
        batch = questions(cfg, b, seed=b)
        run(params, cfg, batch, t2w, args.max_text_tokens, args.max_blocks)  # compiles this batch size
        rows.append(run(params, cfg, batch, t2w, args.max_text_tokens, args.max_blocks))
    device = str(jax.devices()[0].device_kind)
    audio = "units only" if t2w is None else f"audio at {t2w.sample_rate} Hz"
    print(f"batched streaming ({args.config}, {cfg.dtype}, {args.max_blocks} blocks per answer, {audio}, {device})")
    print("| batch | questions/s | first packet ms | batch seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['questions_per_s']:.2f} | {1e3 * r['first_packet_s']:.0f} | {r['seconds']:.2f} |")
    write_json(args.out, {"device": device, "config": args.config, "dtype": cfg.dtype, "audio": t2w is not None,
                          "rows": rows})


if __name__ == "__main__":
    main()
