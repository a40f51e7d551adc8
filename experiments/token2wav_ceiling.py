"""How intelligible are the speech units themselves? Fit each token2wav on the training answers
(the centroid + Griffin-Lim baseline, and the flow-matching token->mel model trained for
`--flow-steps`), resynthesise the *reference* units of test answers and transcribe them with the
ASR judge: the WER no generated speech can beat with that token2wav.

    python -m experiments.token2wav_ceiling --corpus data/embedded --n 24 --flow-steps 800 \
        --out runs/token2wav_ceiling.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from tqdm import tqdm

from data_pipelines.audio import load_audio
from data_pipelines.manifest import load_units, read_manifest
from data_pipelines.validation import BadRecords
from mdm_jax.eval.asr import transcribe, word_error_rate
from mdm_jax.vocoder.centroid import CentroidGriffinLim
from mdm_jax.vocoder.flow import FlowToken2Wav


def answers(manifest: Path, limit: int | None = None):
    """Records of a split with distinct spoken answers."""
    seen, out = set(), []
    for r in read_manifest(str(manifest), BadRecords(strict=True)):
        if r.assistant_audio and r.assistant_audio not in seen:
            seen.add(r.assistant_audio)
            out.append(r)
    return out[:limit]


def resynthesis_wer(t2w, test, num_units: int) -> dict:
    start = time.perf_counter()
    wavs = [t2w(load_units(r, num_units)) for r in tqdm(test, desc=f"resynthesise {type(t2w).__name__}")]
    synth_s = time.perf_counter() - start
    return {"reference_units_wer": word_error_rate([r.assistant_text for r in test], transcribe(wavs)),
            "synthesis_s_per_answer": synth_s / len(test)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/embedded")
    parser.add_argument("--n", type=int, default=24, help="test answers to resynthesise")
    parser.add_argument("--flow-steps", type=int, default=800, help="FlowToken2Wav training steps (0: skip it)")
    parser.add_argument("--d-model", type=int, default=128, help="FlowToken2Wav width (ffn 4x)")
    parser.add_argument("--estimator-layers", type=int, default=4)
    parser.add_argument("--ode-steps", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=0.667, help="noise scale at sampling")
    parser.add_argument("--out", default="runs/token2wav_ceiling.json")
    args = parser.parse_args(argv)
    corpus, out = Path(args.corpus), Path(args.out)
    num_units = json.loads((corpus / "corpus.json").read_text())["units"]["k"]
    load = lambda path: load_audio(path, path, max_seconds=30.0)[0]

    train = answers(corpus / "train.jsonl")
    train_units = [load_units(r, num_units) for r in train]
    train_audio = [load(r.assistant_audio) for r in tqdm(train, desc="load")]
    test = answers(corpus / "test.jsonl", args.n)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"answers": len(test), "original_audio_wer": word_error_rate(
        [r.assistant_text for r in test], transcribe([load(r.assistant_audio) for r in test]))}

    baseline = CentroidGriffinLim.fit(train_units, train_audio, num_units)
    baseline.save(str(out.with_suffix(".npz")))
    result["CentroidGriffinLim"] = resynthesis_wer(baseline, test, num_units)
    if args.flow_steps:
        start = time.perf_counter()
        flow = FlowToken2Wav.fit(train_units, train_audio, num_units, args.flow_steps, d_model=args.d_model,
                                 ffn_dim=4 * args.d_model, estimator_layers=args.estimator_layers)
        train_s = time.perf_counter() - start
        flow = dataclasses.replace(flow, ode_steps=args.ode_steps, temperature=args.temperature)
        flow.save(str(out.with_suffix(".msgpack")))
        result["FlowToken2Wav"] = {"train_steps": args.flow_steps, "train_s": train_s, "ode_steps": args.ode_steps,
                                   "temperature": args.temperature, "config": dataclasses.asdict(flow.config),
                                   **resynthesis_wer(flow, test, num_units)}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
