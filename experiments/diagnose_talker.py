"""Where the Talkers' errors are, in numbers: by position inside the block and by block, CE and accuracy
against the fraction of a block masked (down to fully masked blocks), EOS and lengths, the frequent-unit
bias of parallel commits, whether the end of speech is read off the keys (`eval.diagnostics.end_of_speech`),
and the sampler options (prior-calibrated confidence, early exit) at 1-16 steps.

    python -m experiments.diagnose_talker --demo runs/demo --out runs/diagnosis \
        --talker ar=runs/curves/ar --talker mdm-bernoulli=runs/curves/mdm-bernoulli@2000 [--sampler-grid]

A Talker is a training workdir (its latest checkpoint, or @STEP) or a params folder; it is decoded from
the demo's stage I states on the main split's reference answers (the Talker alone). The frequent units
are those of the training answers (the demo's LLM-states cache). Writes OUT/diagnosis.json,
OUT/diagnosis.md and OUT/diagnosis.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure

from experiments import recipe
from experiments.eval_data import talker_references
from experiments.json_out import write_json
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.config.train import TrainConfig, get_train_config
from mdm_jax.convert.params_io import load_params
from mdm_jax.diffusion.masking import corrupt
from mdm_jax.eval.diagnostics import (
    accuracy_by_position,
    block_mask_shares,
    end_of_speech,
    frequency_bias,
    length_errors,
    loss_by_mask_ratio,
)
from mdm_jax.eval.intervals import fmt, interval
from mdm_jax.eval.metrics import decode_speech, unit_accuracy
from mdm_jax.train.checkpointing import Checkpointer
from mdm_jax.train.llm_states import StatesSource

RATIOS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
OPTIONS = (("calibrated", 0.0), ("max_prob", 0.9), ("calibrated", 0.9))  # (confidence, early exit) beside the default


def load_talker(spec: str):
    """'PATH[@STEP]' (a training workdir or a params folder) -> (speech decoder params, model config)."""
    path, _, step = spec.partition("@")
    if (Path(path) / "train_config.json").exists() and (Path(path) / "checkpoints").exists():
        cfg = TrainConfig.from_json((Path(path) / "train_config.json").read_text())
        ckpt = Checkpointer(Path(path) / "checkpoints", cfg.checkpoint)
        state = ckpt.saved_state(int(step) if step else None)
        ckpt.close()
        return state["params"]["speech_decoder"], cfg.model
    if step:
        raise ConfigError(f"--talker {spec!r}: @STEP needs a training workdir")
    params, cfg = load_params(path)
    return params["speech_decoder"], cfg


def method(cfg) -> str:
    return cfg.sampler.method if cfg.sampler.method in ("ar", "mtp") else "mdm"


def diagnose(name: str, params, cfg, refs: dict, frequencies: np.ndarray, denoise_steps: list[int],
             ratios: list[float], grid: bool) -> dict:
    sd = cfg.speech_decoder
    max_units = refs["max_blocks"] * sd.block_size
    rows = []
    samplers = ([(cfg.sampler.method, SamplerConfig(method=cfg.sampler.method))] if method(cfg) != "mdm" else
                [(f"S={s}", SamplerConfig(denoise_steps=s)) for s in denoise_steps])
    if grid and method(cfg) == "mdm":  # one step commits every token at once: the options change nothing there
        samplers += [(f"S={s} {c}{f' exit {e:g}' if e else ''}", SamplerConfig(denoise_steps=s, confidence=c,
                                                                             early_exit=e))
                     for s in denoise_steps if s > 1 for c, e in OPTIONS]
    for label, sampler in samplers:
        speech = decode_speech(params, dataclasses.replace(cfg, sampler=sampler), refs["hidden"],
                               max_blocks=refs["max_blocks"])
        gen = speech["units"]
        blocks = sum(min(-(-(len(u) + 1) // sd.block_size), refs["max_blocks"]) for u in gen)  # decoded
        by_pos = accuracy_by_position(gen, refs["units"], block_size=sd.block_size, anchors=sd.text_per_block)
        rows.append({"talker": name, "sampler": label, "method": method(cfg),
                     "unit_accuracy": interval(unit_accuracy(gen, refs["units"])["counts"]),
                     "length_ratio": unit_accuracy(gen, refs["units"])["length_ratio"],
                     "forwards_per_block": sum(speech["forwards"]) / max(blocks, 1),
                     "anchor": interval(by_pos["anchor"]), "rest": interval(by_pos["rest"]),
                     "position": [c.value for c in by_pos["position"]], "block": [c.value for c in by_pos["block"]],
                     "length": length_errors(gen, refs["units"], max_units=max_units),
                     "frequency": frequency_bias(gen, refs["units"], frequencies=frequencies)})
    mdm = method(cfg) == "mdm"
    masked = loss_by_mask_ratio(params, cfg, refs["hidden"], refs["units"], ratios, jax.random.key(0)) if mdm else None
    ending = end_of_speech(params, cfg, refs["hidden"], refs["units"]) if mdm else None
    return {"talker": name, "rows": rows, "loss_by_mask_ratio": masked, "end_of_speech": ending}


def masking_shares(specs: list[str], base: list[str], batches: int = 50) -> dict:
    """'NAME[:key=value,...]' masking specs (`mask.strategy=NAME` plus overrides) -> `block_mask_shares`
    over `batches` training batches of the LLM-states cache, each with its own noise draw."""
    out = {}
    for spec in specs:
        name, _, keys = spec.partition(":")
        cfg = get_train_config(recipe.PRESET, base + [f"mask.strategy={name}", *(k for k in keys.split(",") if k)])
        sd, source = cfg.model.speech_decoder, StatesSource(cfg)
        targets, valids = [], []
        for i in range(batches):
            batch = next(source)
            noisy = corrupt(jax.random.key(i), batch["units"], batch["speech_valid"], cfg.mask,
                            block_size=sd.block_size, mask_id=sd.mask_id)
            targets.append(np.asarray(noisy.is_target))
            valids.append(batch["speech_valid"])
        width = max(t.shape[1] for t in targets)  # bucketed batches differ in length: pad as invalid
        padded = [np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in xs])
                  for xs in (targets, valids)]
        out[spec] = block_mask_shares(*padded, block_size=sd.block_size)
    return out


def markdown(results: list[dict], maskings: dict | None = None) -> str:
    lines = ["| Talker | sampler | unit acc | anchor positions | other positions | length ratio | longer / "
             "shorter / unended | mean excess units | frequent-unit share gen / ref | frequent for rare | "
             "repeats gen / ref | forwards per block |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            n, q = r["length"], r["frequency"]
            lines.append(f"| {r['talker']} | {r['sampler']} | {fmt(r['unit_accuracy'])} | {fmt(r['anchor'])} | "
                         f"{fmt(r['rest'])} | {r['length_ratio']:.2f} | {n['longer']:.2f} / {n['shorter']:.2f} / "
                         f"{n['unended']:.2f} | {n['mean_excess']:+.1f} | {q['generated_share']:.3f} / "
                         f"{q['reference_share']:.3f} | {q['frequent_for_rare']:.2f} | {q['generated_repeats']:.2f} / "
                         f"{q['reference_repeats']:.2f} | {r['forwards_per_block']:.2f} |")
    blocks = len(results[0]["rows"][0]["block"])  # the references' longest answer, in blocks
    lines += ["", "Unit accuracy by block of the answer (each Talker's first sampler):", "",
              "| Talker | sampler | " + " | ".join(f"block {i}" for i in range(blocks)) + " |",
              "|---|---|" + "---|" * blocks]
    for res in results:
        r = res["rows"][0]
        lines.append(f"| {r['talker']} | {r['sampler']} | " + " | ".join(f"{v:.2f}" for v in r["block"]) + " |")
    masked = [res for res in results if res["loss_by_mask_ratio"]]
    if masked:
        ratios = list(masked[0]["loss_by_mask_ratio"])
        lines += ["", "CE / accuracy / EOS accuracy of the denoiser on blocks with a fraction masked (the training "
                  "forward, every block of every answer):", "",
                  "| Talker | " + " | ".join(f"{float(r):.0%} masked" for r in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]
        for res in masked:
            cells = [f"{m['ce']:.2f} / {m['accuracy']:.2f} / {m['eos_accuracy']:.2f}"
                     for m in res["loss_by_mask_ratio"].values()]
            lines.append(f"| {res['talker']} | " + " | ".join(cells) + " |")
    ending = [res for res in results if res.get("end_of_speech")]
    if ending:
        lines += ["", "Where the denoiser ends a fully masked last block (earlier blocks clean): with the keys "
                  "after EOS dropped (what `mask.after_eos=pad` trains on) and with every key (what the sampler "
                  "sees):", "",
                  "| Talker | keys | EOS at the true end | first EOS early / late / none |", "|---|---|---|---|"]
        for res in ending:
            for view, e in res["end_of_speech"].items():
                lines.append(f"| {res['talker']} | {'after EOS dropped' if view == 'pad' else 'every key'} | "
                             f"{e['eos_accuracy']:.2f} | {e['early']:.2f} / {e['late']:.2f} / {e['none']:.2f} |")
    if maskings:
        lines += ["", "What each masking trains on (blocks of the training batches holding a valid token):", "",
                  "| masking | fully masked blocks | clean blocks (no loss) | mean masked fraction | blocks >= 90 % "
                  "masked |", "|---|---|---|---|---|"]
        for spec, m in maskings.items():
            lines.append(f"| {spec} | {m['fully_masked']:.3f} | {m['clean']:.3f} | {m['mean']:.2f} | "
                         f"{m['histogram'][-1]:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path):
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    for i, res in enumerate(results):
        color = f"C{i % 10}"
        if res["loss_by_mask_ratio"]:
            ratios = [float(r) for r in res["loss_by_mask_ratio"]]
            for ax, key in ((axes[0], "ce"), (axes[1], "accuracy")):
                ax.plot(ratios, [m[key] for m in res["loss_by_mask_ratio"].values()], marker="o", color=color,
                        label=res["talker"])
        first = res["rows"][0]
        axes[2].plot(range(len(first["position"])), first["position"], marker="o", color=color,
                     label=f"{res['talker']} {first['sampler']}")
    for ax, name in zip(axes, ("CE on masked tokens", "accuracy on masked tokens", "unit accuracy")):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_xlabel("fraction of each block masked (1 = what a 1-step sampler sees)")
    axes[1].set_xlabel("fraction of each block masked")
    axes[2].set_xlabel("position inside the block (anchors first)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/demo")
    parser.add_argument("--out", default="runs/diagnosis")
    parser.add_argument("--corpus", default="data/embedded")
    parser.add_argument("--talker", action="append", required=True, help="NAME=PATH[@STEP] (repeatable)")
    parser.add_argument("--denoise-steps", default="1,4,16")
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    parser.add_argument("--sampler-grid", action="store_true",
                        help="MDM: calibrated confidence and early exit at each of --denoise-steps > 1")
    parser.add_argument("--eval-dialogues", type=int, default=24)
    parser.add_argument("--maskings", default="bernoulli;hierarchical",
                        help="maskings NAME[:key=value,...], separated by ;, whose block noise levels are tabled")
    args = parser.parse_args(argv)
    demo, out = Path(args.demo), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = json.loads((Path(args.corpus) / "corpus.json").read_text())
    refs = talker_references(demo, args.corpus, corpus, recipe.FULL, args.eval_dialogues)
    with np.load(demo / "llm_states.npz") as f:
        train_units = f["units"]
    frequencies = np.bincount(train_units[train_units < corpus["units"]["k"]], minlength=corpus["units"]["k"])
    base = recipe.model_overrides(corpus, recipe.FULL) + recipe.data_overrides(args.corpus, recipe.FULL)
    maskings = masking_shares([m for m in args.maskings.split(";") if m],
                              base + [f"data.llm_states={demo / 'llm_states.npz'}"])
    results = []
    for spec in args.talker:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--talker {spec!r}: expected NAME=PATH[@STEP]")
        params, cfg = load_talker(path)
        results.append(diagnose(name, params, cfg, refs, frequencies, [int(s) for s in args.denoise_steps.split(",")],
                                [float(r) for r in args.ratios.split(",")], args.sampler_grid))
        print(markdown(results[-1:]))
    device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {os.cpu_count()} cores)"
    write_json(out / "diagnosis.json", {"device": device, "eval_dialogues": len(refs["units"]), "results": results,
                                        "maskings": maskings})
    (out / "diagnosis.md").write_text(markdown(results, maskings))
    plot(results, out / "diagnosis.png")
    print(markdown(results, maskings))


if __name__ == "__main__":
    main()
