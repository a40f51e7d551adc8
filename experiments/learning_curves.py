"""Learning curves of the Talkers: quality vs training steps and vs wall seconds, every budget read off them.

    python -m experiments.learning_curves --demo runs/demo --out runs/curves [--steps 3000] [--every 250]
        [--talkers ar,mtp,mdm-bernoulli,mdm-hierarchical] [--variant NAME=BASE:key=value,...]
        [--distill-from mdm-bernoulli@500,1000,2000] [--denoise-steps 1,4] [--wer-every 2]

Starts from a demo run's stage I params, LLM-states cache and token2wav (`--demo`, after `make demo`),
so every Talker reads the same states and is judged by the same token2wav. Each Talker trains once for
`--steps` updates (the demo's recipe: its lr, batch and cosine schedule over the whole run, so an
intermediate checkpoint is a lower bound on what a run of that length would reach), saving every
`--every`; each checkpoint is evaluated on the demo's main split, the Talker alone (the LLM's states on
the reference answer): unit accuracy with its 95 % interval, length ratio, and every `--wer-every`-th
checkpoint the WER of its speech (token2wav + the Whisper tiny.en judge), AR/MTP by their own sampler,
MDM at each `--denoise-steps`. Wall seconds are the training steps' own (metrics.jsonl step times:
compilation, checkpoints and evaluation left out).

`--variant NAME=BASE:key=value,...` adds a Talker: BASE's recipe plus those overrides (e.g.
`mdm-pad=mdm-bernoulli:mask.after_eos=pad`). `--distill-from TALKER@S1,S2` runs the paper's
self-distillation (`experiments.recipe`, `--distill-updates`) from TALKER's checkpoints at those steps:
the distilled Talker's quality against its teacher's age.

Writes OUT/curves.json (every evaluated point, the per-Talker plateau reading), OUT/curves.md,
OUT/learning_curves.png (the `--talkers` and the distillation teachers, distilled students as stars at
their teacher's age) and OUT/learning_curves_all.png (every Talker and variant: one step, most steps,
length ratio). Each Talker trains and evaluates in OUT/<name> (curve.jsonl keeps evaluated points), so
a rerun resumes where it stopped.
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
from matplotlib.figure import Figure
from tqdm import tqdm

from experiments import recipe
from experiments.eval_data import talker_references
from experiments.json_out import write_json
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.config.train import TrainConfig, get_train_config
from mdm_jax.convert.params_io import save_params
from mdm_jax.eval.intervals import fmt, interval
from mdm_jax.eval.metrics import decode_speech, speech_wer, unit_accuracy
from mdm_jax.train.checkpointing import Checkpointer

# name -> (stage II objective, masking): the demo's Talkers and the paper's alternative stage 2
TALKERS = {"ar": ("ar", None), "mtp": ("mtp", None), "mdm-bernoulli": ("mdm", "bernoulli"),
           "mdm-hierarchical": ("mdm", "hierarchical")}


@dataclasses.dataclass(frozen=True)
class Talker:
    name: str
    objective: str  # ar | mtp | mdm | distill
    overrides: tuple[str, ...]  # the stage's overrides (recipe + variant), train_steps and checkpoints included
    init: str = ""  # params it starts from ('' = stage I's)
    teacher_step: int | None = None  # distill: the teacher checkpoint's step


def talker(name: str, base: str, extra: tuple[str, ...], budget: recipe.Budget, steps: int, every: int) -> Talker:
    if base not in TALKERS:
        raise ConfigError(f"unknown Talker {base!r}; expected one of {sorted(TALKERS)}")
    objective, masking = TALKERS[base]
    stage = recipe.stage_overrides(objective, budget, masking=masking)
    return Talker(name, objective, (*stage, *extra, *checkpoints(steps, every)))


def checkpoints(steps: int, every: int) -> list[str]:
    return [f"train_steps={steps}", f"checkpoint.every={every}", f"checkpoint.max_to_keep={steps // every + 1}",
            "checkpoint.async_save=false"]


def parse_variant(text: str) -> tuple[str, str, tuple[str, ...]]:
    """'NAME=BASE:key=value,key=value' -> (NAME, BASE, overrides)."""
    name, sep, rest = text.partition("=")
    base, _, keys = rest.partition(":")
    if not sep or not name or not base:
        raise ConfigError(f"--variant {text!r}: expected NAME=BASE:key=value,...")
    return name, base, tuple(k for k in keys.split(",") if k)


def parse_distill(text: str) -> tuple[str, list[int]]:
    """'TALKER@S1,S2' -> (TALKER, [S1, S2])."""
    name, sep, steps = text.partition("@")
    try:
        return name, [int(s) for s in steps.split(",")] if sep else []
    except ValueError:
        raise ConfigError(f"--distill-from {text!r}: expected TALKER@STEP,STEP,...") from None


def train_seconds(workdir: Path, steps) -> dict[int, float | None]:
    """step -> seconds of training up to it, from metrics.jsonl's step times (compilation left out;
    a step inside a logging interval takes that interval's time per step; None past the last log)."""
    logged, last = [], 0  # (interval start, end, seconds per step)
    path = workdir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        m = json.loads(line)
        if m["step"] > last:  # a resumed run logs its first steps again
            logged.append((last, m["step"], m.get("step_time", 0.0)))
            last = m["step"]
    out = {}
    for step in steps:
        done = sum((end - start) * t for start, end, t in logged if end <= step)
        part = [(step - start) * t for start, end, t in logged if start < step < end]
        out[step] = done + sum(part) if step <= last else None
    return out


def samplers(objective: str, denoise_steps: list[int]) -> list[tuple[str, SamplerConfig]]:
    if objective in ("ar", "mtp"):
        return [(objective, SamplerConfig(method=objective))]
    return [(f"S={s}", SamplerConfig(denoise_steps=s)) for s in denoise_steps]


def evaluate(talker_: Talker, workdir: Path, refs: dict, denoise_steps: list[int], wer_every: int,
             log=tqdm.write) -> list[dict]:
    """Every saved checkpoint of one Talker -> its evaluated points (kept in workdir/curve.jsonl)."""
    cache = workdir / "curve.jsonl"
    done = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    seen = {(p["step"], p["sampler"]) for p in done}
    cfg = TrainConfig.from_json((workdir / "train_config.json").read_text())
    ckpt = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    steps = sorted(ckpt.manager.all_steps())
    seconds = train_seconds(workdir, steps)
    for i, step in enumerate(steps):
        todo = [(label, s) for label, s in samplers(talker_.objective, denoise_steps) if (step, label) not in seen]
        if not todo:
            continue
        params = ckpt.saved_state(step)["params"]["speech_decoder"]
        for label, sampler in todo:
            point = evaluate_point(params, dataclasses.replace(cfg.model, sampler=sampler), refs,
                                   judge=(len(steps) - 1 - i) % wer_every == 0)
            point.update(talker=talker_.name, sampler=label, step=step, train_s=seconds[step],
                         teacher_step=talker_.teacher_step)
            log(f"{talker_.name} step {step} {label}: unit acc {point['unit_accuracy']['value']:.3f}, length "
                f"{point['length_ratio']:.2f}" + (f", WER alone {point['wer_alone']['value']:.3f}"
                                                  if "wer_alone" in point else ""))
            done.append(point)
            with cache.open("a") as f:
                f.write(json.dumps(point) + "\n")
    ckpt.close()
    return done


def evaluate_point(params, cfg, refs: dict, judge: bool) -> dict:
    """One Talker's params and sampler on the references -> unit accuracy (+ WER alone when `judge`)."""
    speech = decode_speech(params, cfg, refs["hidden"], max_blocks=refs["max_blocks"])
    accuracy = unit_accuracy(speech["units"], refs["units"])
    counts = {"unit_accuracy": accuracy["counts"]}
    if judge:
        counts["wer_alone"] = speech_wer(speech["units"], refs["texts"], refs["t2w"])["counts"]
    return {"length_ratio": accuracy["length_ratio"], "tokens_per_s": speech["tokens_per_s"],
            "counts": {k: c.to_json() for k, c in counts.items()}, **{k: interval(c) for k, c in counts.items()}}


def plateau(points: list[dict], tolerance: float = 0.02) -> dict:
    """The first step whose unit accuracy is within `tolerance` of the curve's best, and that best."""
    best = max(p["unit_accuracy"]["value"] for p in points)
    first = min((p for p in points if p["unit_accuracy"]["value"] >= best - tolerance), key=lambda p: p["step"])
    return {"best": best, "step": first["step"], "train_s": first["train_s"], "tolerance": tolerance}


def distill_from_checkpoint(teacher: Talker, step: int, out: Path, budget: recipe.Budget, updates: int,
                            every: int) -> Talker:
    """The paper's distillation starting from `teacher`'s checkpoint at `step` (exported once)."""
    workdir = out / teacher.name
    params_dir = workdir / f"params_step{step}"
    if not (params_dir / "config.json").exists():
        cfg = TrainConfig.from_json((workdir / "train_config.json").read_text())
        ckpt = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
        if step not in ckpt.manager.all_steps():
            raise ConfigError(f"{workdir}: no checkpoint at step {step} (saved: {ckpt.manager.all_steps()})")
        save_params(params_dir, ckpt.saved_state(step)["params"], cfg.model)
        ckpt.close()
    stage = recipe.stage_overrides("distill", budget)
    return Talker(f"{teacher.name}-distill@{step}", "distill", (*stage, *checkpoints(updates, every)),
                  init=str(params_dir.resolve()), teacher_step=step)


def markdown(points: list[dict], summary: dict, header: dict) -> str:
    lines = [f"Learning curves on {header['device']}: {header['eval_dialogues']} main-split dialogues, the Talker "
             "alone (the LLM's states on the reference answer); brackets: 95 % bootstrap intervals over dialogues. "
             "Plateau: the first checkpoint within 0.02 of the curve's best unit accuracy.", "",
             "| Talker | sampler | plateau step | train s to plateau | best unit acc | last step | last unit acc | "
             "last length ratio | last WER alone |", "|---|---|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        last = max((p for p in points if f"{p['talker']} {p['sampler']}" == key), key=lambda p: p["step"])
        wer = fmt(last.get("wer_alone"))
        lines.append(f"| {last['talker']} | {last['sampler']} | {s['step']} | {s['train_s'] or 0:.0f} | "
                     f"{s['best']:.3f} | {last['step']} | {fmt(last['unit_accuracy'])} | "
                     f"{last['length_ratio']:.2f} | {wer} |")
    return "\n".join(lines) + "\n"


def plot(points: list[dict], path: Path, header: dict, talkers: set[str]):
    """Unit accuracy and WER alone vs steps and vs training seconds, one line per Talker of `talkers`
    and sampler; distilled Talkers as points at their teacher's age."""
    fig = Figure(figsize=(13, 9))
    axes = fig.subplots(2, 2)
    curves = sorted({(p["talker"], p["sampler"]) for p in points
                     if p["teacher_step"] is None and p["talker"] in talkers})
    colors = {c: f"C{i % 10}" for i, c in enumerate(curves)}
    for row, metric in enumerate(("unit_accuracy", "wer_alone")):
        for col, x in enumerate(("step", "train_s")):
            ax = axes[row, col]
            for c in curves:
                line = sorted((p[x], p[metric]) for p in points
                              if (p["talker"], p["sampler"]) == c and metric in p and p[x] is not None)
                if not line:
                    continue
                xs, f = zip(*line)
                value = np.array([v["value"] for v in f])
                ax.plot(xs, value, marker="o", ms=3, color=colors[c], label=f"{c[0]} {c[1]}")
                ax.fill_between(xs, [v["lo"] for v in f], [v["hi"] for v in f], color=colors[c], alpha=0.12)
            if x == "step":  # distillation: the final student at its teacher's age
                for p in points:
                    final = p["teacher_step"] is not None and metric in p and p["step"] == max(
                        q["step"] for q in points if q["talker"] == p["talker"])
                    if final:
                        f = p[metric]
                        err = [[f["value"] - f["lo"]], [f["hi"] - f["value"]]]
                        ax.errorbar(p["teacher_step"], f["value"], yerr=err, fmt="*", ms=9, capsize=2, color="black")
                        ax.annotate(f"distilled {p['sampler']}", (p["teacher_step"], f["value"]), fontsize=6,
                                    xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("training steps" if x == "step" else "training seconds (this machine)")
            ax.set_ylabel("unit accuracy (Talker alone)" if metric == "unit_accuracy" else "WER alone")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"learning curves, 95 % intervals ({header['device']}, {header['eval_dialogues']} dialogues; "
                 "stars: distilled at the teacher's step)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_variants(points: list[dict], path: Path, header: dict):
    """Every Talker (recipe and variants) side by side: unit accuracy at one step (MDM), at the best of
    the other samplers (MDM's most steps, AR, MTP) and the length ratio, vs training steps."""
    fig = Figure(figsize=(16, 4.5))
    axes = fig.subplots(1, 3)
    names = sorted({p["talker"] for p in points if p["teacher_step"] is None})
    for i, name in enumerate(names):
        mine = [p for p in points if p["talker"] == name]
        samplers = sorted({p["sampler"] for p in mine}, key=lambda s: int(s[2:]) if s.startswith("S=") else 0)
        color, style = f"C{i % 10}", ("-", "--", ":")[i // 10 % 3]
        for ax, sampler, metric in ((axes[0], "S=1", "unit_accuracy"), (axes[1], samplers[-1], "unit_accuracy"),
                                    (axes[2], samplers[-1], "length_ratio")):
            line = sorted((p["step"], p[metric]) for p in mine if p["sampler"] == sampler)
            if line:
                xs, ys = zip(*line)
                ax.plot(xs, [y["value"] if isinstance(y, dict) else y for y in ys], marker="o", ms=2, color=color,
                        linestyle=style, label=f"{name} {sampler}")
    for ax, title in zip(axes, ("MDM at one step per block", "MDM at its most steps; AR; MTP",
                                "length ratio (same samplers)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("unit accuracy (Talker alone)")
    fig.suptitle(f"every Talker and variant ({header['device']}, {header['eval_dialogues']} dialogues)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/demo", help="a demo run: its stage1/params, llm_states.npz, token2wav")
    parser.add_argument("--out", default="runs/curves")
    parser.add_argument("--corpus", default="data/embedded")
    parser.add_argument("--talkers", default="ar,mtp,mdm-bernoulli,mdm-hierarchical")
    parser.add_argument("--variant", action="append", default=[], help="NAME=BASE:key=value,... (repeatable)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--distill-from", action="append", default=[], help="TALKER@STEP,STEP (repeatable)")
    parser.add_argument("--distill-updates", type=int, default=240)
    parser.add_argument("--denoise-steps", default="1,4")
    parser.add_argument("--wer-every", type=int, default=2, help="judge every n-th checkpoint (the last always)")
    parser.add_argument("--eval-dialogues", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="the quick demo's budget and corpus (tests)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    demo, out = Path(args.demo), Path(args.out)
    budget = recipe.QUICK if args.quick else recipe.FULL
    corpus = json.loads((Path(args.corpus) / "corpus.json").read_text())
    base = recipe.model_overrides(corpus, budget) + recipe.data_overrides(args.corpus, budget)
    base += [f"data.llm_states={(demo / 'llm_states.npz').resolve()}"]
    stage1 = str((demo / "stage1" / "params").resolve())
    todo = {n: talker(n, n, (), budget, args.steps, args.every) for n in args.talkers.split(",") if n}
    for text in args.variant:
        name, base_name, extra = parse_variant(text)
        todo[name] = talker(name, base_name, extra, budget, args.steps, args.every)
    distill = [parse_distill(t) for t in args.distill_from]
    for name, _ in distill:
        if name not in todo:
            raise ConfigError(f"--distill-from {name!r}: not among the Talkers {sorted(todo)}")
    refs = talker_references(demo, args.corpus, corpus, budget, args.eval_dialogues)
    denoise_steps = [int(s) for s in args.denoise_steps.split(",")]
    points = []

    def run(t: Talker):
        get_train_config(recipe.PRESET, base + list(t.overrides))  # a bad override fails before training
        recipe.run_stage(str(out / t.name), base + list(t.overrides) + [f"init_from={t.init or stage1}"],
                         log=tqdm.write)
        points.extend(evaluate(t, out / t.name, refs, denoise_steps, args.wer_every))

    for t in todo.values():
        run(t)
    for name, steps in distill:
        for step in steps:
            run(distill_from_checkpoint(todo[name], step, out, budget, args.distill_updates,
                                        max(1, args.distill_updates // 2)))
    curves = sorted({(p["talker"], p["sampler"]) for p in points})
    summary = {f"{t} {s}": plateau([p for p in points if (p["talker"], p["sampler"]) == (t, s)]) for t, s in curves}
    header = {"device": f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {os.cpu_count()} cores)",
              "eval_dialogues": len(refs["units"]), "wall_s": time.perf_counter() - start,
              "steps": args.steps, "every": args.every}
    write_json(out / "curves.json", {**header, "plateau": summary, "points": points})
    (out / "curves.md").write_text(markdown(points, summary, header))
    shown = set(todo) - {parse_variant(v)[0] for v in args.variant} | {name for name, _ in distill}
    plot(points, out / "learning_curves.png", header, shown)
    plot_variants(points, out / "learning_curves_all.png", header)
    print(markdown(points, summary, header))


if __name__ == "__main__":
    main()
