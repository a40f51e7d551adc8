"""Word error rate of Whisper tiny.en (ours, greedy) on the spoken questions of an embedded-corpus split.

    python -m experiments.asr_wer [--corpus data/embedded] [--split test] [--n 48] [--out runs/asr_wer.json]

References and transcripts go through Whisper's English normaliser before `jiwer`; the WER is
printed overall and per voice, with the raw (unnormalised, lower-cased) WER beside it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

import jiwer

from data_pipelines.audio import load_audio
from data_pipelines.manifest import read_manifest
from data_pipelines.validation import BadRecords
from mdm_jax.eval.asr import load_asr, transcribe, word_error_rate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="data/embedded")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--out", default="runs/asr_wer.json")
    args = p.parse_args(argv)

    records = read_manifest(os.path.join(args.corpus, f"{args.split}.jsonl"), BadRecords(strict=True))[: args.n]
    audio = [load_audio(r.user_audio, r.id, max_seconds=30.0)[0] for r in records]
    asr = load_asr()
    transcribe(audio[:1], asr)  # compile outside the timing
    start = time.perf_counter()
    hypotheses = transcribe(audio, asr)
    seconds = time.perf_counter() - start
    references = [r.user_text for r in records]
    by_voice = collections.defaultdict(list)
    for r, h in zip(records, hypotheses):
        by_voice[r.speaker].append((r.user_text, h))
    result = {
        "corpus": args.corpus, "split": args.split, "utterances": len(records),
        "wer": word_error_rate(references, hypotheses),
        "raw_wer": jiwer.wer([t.lower() for t in references], [h.lower() for h in hypotheses]),
        "wer_by_voice": {v: word_error_rate(*zip(*pairs)) for v, pairs in sorted(by_voice.items())},
        "seconds_per_utterance": seconds / len(records),
        "examples": [{"reference": r, "hypothesis": h} for r, h in zip(references, hypotheses)][:12],
    }
    print(f"{len(records)} {args.split} utterances: WER {result['wer']:.3f} (raw {result['raw_wer']:.3f}), "
          f"{result['seconds_per_utterance']:.2f} s/utterance")
    for voice, wer in result["wer_by_voice"].items():
        print(f"  {voice:<22} {wer:.3f}")
    for e in result["examples"][:6]:
        print(f"  {e['reference']!r} -> {e['hypothesis']!r}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
