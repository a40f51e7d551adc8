"""How intelligible are the speech units themselves? Fit the token2wav baseline on the training
answers, resynthesise the *reference* units of test answers and transcribe them with the ASR judge:
the WER no generated speech can beat with this token2wav.

    python -m experiments.token2wav_ceiling --corpus data/embedded --n 24 --out runs/token2wav_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from data_pipelines.audio import load_audio
from data_pipelines.manifest import load_units, read_manifest
from data_pipelines.validation import BadRecords
from mdm_jax.asr import transcribe, word_error_rate
from mdm_jax.token2wav import CentroidGriffinLim


def answers(manifest: Path, limit: int | None = None):
    """Records of a split with distinct spoken answers."""
    seen, out = set(), []
    for r in read_manifest(str(manifest), BadRecords(strict=True)):
        if r.assistant_audio and r.assistant_audio not in seen:
            seen.add(r.assistant_audio)
            out.append(r)
    return out[:limit]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/embedded")
    parser.add_argument("--n", type=int, default=24, help="test answers to resynthesise")
    parser.add_argument("--out", default="runs/token2wav_ceiling.json")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    num_units = json.loads((corpus / "corpus.json").read_text())["units"]["k"]
    load = lambda path: load_audio(path, path, max_seconds=30.0)[0]  # noqa: E731

    train = answers(corpus / "train.jsonl")
    t2w = CentroidGriffinLim.fit([load_units(r, num_units) for r in train],
                                 [load(r.assistant_audio) for r in tqdm(train, desc="fit")], num_units)
    t2w.save(str(Path(args.out).with_suffix(".npz")))
    test = answers(corpus / "test.jsonl", args.n)
    start = time.perf_counter()
    wavs = [t2w(load_units(r, num_units)) for r in tqdm(test, desc="resynthesise")]
    synth_s = time.perf_counter() - start
    texts = [r.assistant_text for r in test]
    result = {"token2wav": "CentroidGriffinLim", "answers": len(test),
              "reference_units_wer": word_error_rate(texts, transcribe(wavs)),
              "original_audio_wer": word_error_rate(texts, transcribe([load(r.assistant_audio) for r in test])),
              "synthesis_s_per_answer": synth_s / len(test)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
