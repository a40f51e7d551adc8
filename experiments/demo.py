"""`make demo`: train the `tiny` VocalNet on the embedded corpus and compare AR, MTP and MDM speech
decoding on held-out spoken questions, on whatever machine this runs (2 CPU cores suffice).

    python -m experiments.demo --out runs/demo [--quick]

Builds (or reuses) the corpus, trains every stage of `experiments.recipe` (resumable: rerun the
same command), fits token2wav, then for each held-out question: speech in -> greedy text answer
-> speech units by each decoder -> waveform -> the Whisper tiny.en judge. Writes under --out:
report.json, report.md (the table), quality_vs_speed.png, wavs/<method>/<dialogue>.wav, and
model.json (the final model: distilled params, tokenizer, token2wav) for inference, e.g.
experiments/colab_inference.ipynb.

Metrics per decoder: text_accuracy (the LLM's answer, the same for every decoder), unit_accuracy
and length_ratio (the decoder alone: units decoded from the LLM's states on the reference answer,
teacher-forced, against the reference's units; the end-to-end speech follows the model's own
answer, whose units have no reference), wer (judge transcript of the end-to-end resynthesised
speech vs the reference answer), wer_vs_text (vs the model's own text answer),
tokens/s and first-chunk latency of the speech decoder alone (batch 1, after warm-up) as ratios
to AR in this run, and the first packet: the end of the question to the first chunk's audio (the
LLM's first text_per_block tokens + the decoder's first block + token2wav of it, each timed warm).
`reference_units_wer` resynthesises the reference units: the ceiling of this token2wav.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import soundfile as sf
from matplotlib.figure import Figure

from data_pipelines.manifest import load_units
from experiments import recipe
from experiments.eval_data import (
    fit_flow_token2wav,
    fit_token2wav,
    held_out_questions,
    reference_answers,
    spoken_answers,
    spoken_questions,
)
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.convert.params_io import load_params
from mdm_jax.eval.asr import normalize, word_error_rate
from mdm_jax.eval.metrics import (
    decode_speech,
    first_audio_seconds,
    first_text_seconds,
    speech_wer,
    text_accuracy,
    unit_accuracy,
)

WAVS_PER_METHOD = 3
PACKET_DIALOGUES = 5  # first-packet shares of the LLM and token2wav: a median over this many questions


def methods(budget: recipe.Budget) -> list[tuple[str, SamplerConfig, str]]:
    """(row label, sampler, decoder stage): AR first, every ratio is against it."""
    steps = (1, 4) if budget is recipe.QUICK else (1, 2, 4)
    rows = [("ar", SamplerConfig(method="ar"), "ar"), ("mtp", SamplerConfig(method="mtp"), "mtp")]
    rows += [(f"mdm S={s}", SamplerConfig(denoise_steps=s), "mdm") for s in steps]
    rows += [(f"mdm distilled S={s}", SamplerConfig(denoise_steps=s), "distill") for s in (1, 2) if s in steps]
    return rows


def evaluate(out: Path, corpus_dir: str, corpus: dict, stages: dict[str, str], budget: recipe.Budget, log=print):
    params, cfg = load_params(stages["stage1"])
    records = held_out_questions(corpus_dir, budget.eval_dialogues)
    answers, texts = spoken_answers(params, cfg, corpus_dir, records)
    forced = reference_answers(params, cfg, corpus_dir, records)
    references = [r.assistant_text for r in records]
    text = text_accuracy(texts, references)
    ref_units = [load_units(r, corpus["units"]["k"]) for r in records]
    baseline = speech_wer(ref_units, references, fit_token2wav(corpus_dir, corpus, str(out / "token2wav_centroid.npz")))
    log("training token2wav (flow matching to the mel)")
    t2w = fit_flow_token2wav(corpus_dir, corpus, str(out / "token2wav.msgpack"), budget.token2wav_train_steps,
                             cfg.speech_decoder.block_size,
                             small=budget is recipe.QUICK)
    reference = speech_wer(ref_units, references, t2w)  # the ceiling of every row below
    spoken = [i for i, t in enumerate(texts) if normalize(t)]  # answers a WER can be measured against
    questions, end = spoken_questions(cfg, corpus_dir, records[:PACKET_DIALOGUES])
    sd = cfg.speech_decoder  # the first packet = the first text_per_block tokens, one speech block, its audio
    packet = {"text_s": first_text_seconds(params, cfg, questions, eos_id=end, tokens=sd.text_per_block),
              "token2wav_s": first_audio_seconds(t2w, ref_units[:PACKET_DIALOGUES], sd.block_size)}

    rows, examples = [], []
    for label, sampler, stage in methods(budget):
        params_, stage_cfg = load_params(stages[stage])
        dec, dec_cfg = params_["speech_decoder"], dataclasses.replace(stage_cfg, sampler=sampler)
        log(f"decoding speech: {label}")
        speech = decode_speech(dec, dec_cfg, [a.hidden for a in answers], max_blocks=budget.max_blocks)
        alone = decode_speech(dec, dec_cfg, forced, max_blocks=budget.max_blocks)
        judged = speech_wer(speech["units"], references, t2w)
        own = [i for i in spoken if len(speech["units"][i])]
        consistency = (word_error_rate([texts[i] for i in own], [judged["transcripts"][i] for i in own])
                       if own else None)
        rows.append({"method": sampler.method,
                     "denoise_steps": sampler.denoise_steps if sampler.method == "mdm" else None,
                     "label": label,
                     "distill_rounds": int(stage == "distill"),  # the paper's one distillation stage
                     "text_accuracy": text["text_accuracy"], **unit_accuracy(alone["units"], ref_units),
                     "wer": judged["wer"], "wer_vs_text": consistency,
                     "tokens_per_s": speech["tokens_per_s"], "first_chunk_s": speech["first_chunk_s"],
                     "first_packet_s": packet["text_s"] + speech["first_chunk_s"] + packet["token2wav_s"]})
        for i in range(min(WAVS_PER_METHOD, len(records))):
            path = out / "wavs" / label.replace(" ", "_").replace("=", "") / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, t2w(speech["units"][i]) if len(speech["units"][i]) else np.zeros(1600), t2w.sample_rate)
        examples.append({"label": label, "transcripts": judged["transcripts"][:WAVS_PER_METHOD]})
    for r in rows:
        r["speedup_vs_ar"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
        r["first_chunk_vs_ar"] = r["first_chunk_s"] / rows[0]["first_chunk_s"]
        r["first_packet_vs_ar"] = r["first_packet_s"] / rows[0]["first_packet_s"]
    dialogues = [{"question": r.user_text, "reference": r.assistant_text, "answer": t}
                 for r, t in zip(records, texts)]
    return {"rows": rows, "reference_units_wer": reference["wer"], "reference_units_wer_centroid": baseline["wer"],
            "text_wer": text["text_wer"], "first_packet_parts_s": packet, "verdict": verdict(rows),
            "dialogues": dialogues, "examples": examples}


def markdown(report: dict) -> str:
    parts = report["first_packet_parts_s"]
    lines = [f"Held-out test dialogues: {report['eval_dialogues']}, device: {report['device']}, "
             f"demo wall time {report['wall_s'] / 60:.1f} min. Text accuracy (exact answer): "
             f"{report['rows'][0]['text_accuracy']:.3f}. WER of resynthesised reference units (ceiling): "
             f"{report['reference_units_wer']:.3f}. Unit accuracy and length ratio: the speech decoder alone, "
             "from the LLM's states on the reference answer. First chunk: the speech decoder's first block; "
             f"first packet: end of the question to the first block's audio = the LLM's first text tokens "
             f"({parts['text_s'] * 1e3:.0f} ms) + the first chunk + token2wav of it "
             f"({parts['token2wav_s'] * 1e3:.0f} ms).", "",
             "| decoder | unit acc (alone) | length ratio (alone) | WER | WER vs own text | tokens/s "
             "| speed-up vs AR | first chunk vs AR | first packet (ms) | first packet vs AR |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        consistency = "-" if r["wer_vs_text"] is None else f"{r['wer_vs_text']:.3f}"
        lines.append(f"| {r['label']} | {r['unit_accuracy']:.3f} | {r['length_ratio']:.2f} | {r['wer']:.3f} | "
                     f"{consistency} | {r['tokens_per_s']:.0f} | {r['speedup_vs_ar']:.2f}x | "
                     f"{r['first_chunk_vs_ar']:.2f} | {r['first_packet_s'] * 1e3:.0f} | "
                     f"{r['first_packet_vs_ar']:.2f} |")
    return "\n".join(lines + ["", report["verdict"]]) + "\n"


def verdict(rows: list[dict]) -> str:
    """Where MDM loses to AR (rows[0]) on quality in this run, in words."""
    mdm, ar = [r for r in rows if r["method"] == "mdm"], rows[0]
    unit = [r["label"] for r in mdm if r["unit_accuracy"] < ar["unit_accuracy"]]
    wer = [r["label"] for r in mdm if r["wer"] > ar["wer"]]
    said = [f"MDM loses to AR on {name} at: {', '.join(labels)}." if labels else
            f"MDM matches or beats AR on {name} at every step count." for name, labels in
            (("unit accuracy (decoder alone)", unit), ("end-to-end WER", wer))]
    return " ".join(said)


def plot(report: dict, path: Path):
    fig = Figure(figsize=(10, 4))  # no pyplot: no GUI backend, no global figure state
    axes = fig.subplots(1, 2)
    for ax, metric, name in ((axes[0], "unit_accuracy", "unit accuracy, decoder alone (higher is better)"),
                             (axes[1], "wer", "WER of resynthesised speech (lower is better)")):
        for r in report["rows"]:
            ax.scatter(r["speedup_vs_ar"], r[metric], s=40)
            ax.annotate(r["label"], (r["speedup_vs_ar"], r[metric]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if metric == "wer":
            ax.axhline(report["reference_units_wer"], ls="--", c="gray", lw=1, label="reference units")
            ax.legend(fontsize=7)
        ax.set_xlabel("speech tokens/s vs AR (same run)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(f"tiny on the embedded corpus: quality vs speed ({report['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def train_stages(out: Path, corpus_dir: str, corpus: dict, budget: recipe.Budget, timed) -> dict[str, str]:
    """Every stage of the recipe in OUT/<stage> (trained, resumed or reused); -> stage -> params folder.
    `timed(name, fn, *args)` runs fn(*args) and records its seconds."""
    base = recipe.model_overrides(corpus) + recipe.data_overrides(corpus_dir, budget)
    init = timed("init", recipe.initial_params, str(out / "init"), base)
    stages = {"stage1": timed("stage1", recipe.run_stage, str(out / "stage1"),
                              base + recipe.stage_overrides("stage1", budget) + [f"init_from={init}"])}
    states = timed("llm_states", recipe.llm_states, str(out / "llm_states.npz"), stages["stage1"], base)
    decoder = base + [f"data.llm_states={states}"]
    for name in ("mdm", "ar", "mtp"):
        stages[name] = timed(name, recipe.run_stage, str(out / name),
                             decoder + recipe.stage_overrides(name, budget) + [f"init_from={stages['stage1']}"])
    stages["distill"] = timed("distill", recipe.run_stage, str(out / "distill"),
                              decoder + recipe.stage_overrides("distill", budget) + [f"init_from={stages['mdm']}"])
    return stages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="a smaller corpus and few steps (~3 min): a smoke run")
    parser.add_argument("--corpus", help="corpus folder (default: data/embedded, or OUT/corpus with --quick)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = recipe.QUICK if args.quick else recipe.FULL
    corpus_dir = args.corpus or (str(out / "corpus") if args.quick else "data/embedded")
    timings = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        result = fn(*a)
        timings[name] = round(time.perf_counter() - t, 1)
        return result

    corpus = timed("corpus", recipe.prepare_corpus, corpus_dir, budget)
    stages = train_stages(out, corpus_dir, corpus, budget, timed)
    evaluation = timed("evaluate", evaluate, out, corpus_dir, corpus, stages, budget)
    report = {"device": f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {os.cpu_count()} cores)",
              "quick": args.quick, "eval_dialogues": budget.eval_dialogues, "timings_s": timings, **evaluation}
    report = {"wall_s": time.perf_counter() - start, **report}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    model = {"params": stages["distill"], "tokenizer": os.path.join(corpus_dir, "tokenizer.json"), "template": "tiny",
             "token2wav": str(out / "token2wav.msgpack"), "test_manifest": os.path.join(corpus_dir, "test.jsonl")}
    (out / "model.json").write_text(json.dumps({k: str(Path(v).resolve()) if k != "template" else v
                                                for k, v in model.items()}, indent=2))
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "quality_vs_speed.png")
    print(markdown(report))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'quality_vs_speed.png'}, {out / 'wavs'}")


if __name__ == "__main__":
    main()
