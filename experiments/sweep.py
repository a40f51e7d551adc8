"""Stage II ablation sweeps: masking strategy x block size x distillation, each Talker evaluated at
several sampler steps per block on the main held-out split (the demo's protocol), trained under
one or more seeds, every quality figure with its 95 % bootstrap interval over seeds and dialogues,
and the grid's claims judged by paired intervals.

    python -m experiments.sweep --grid experiments/grids/paper_ablations.py --out runs/sweep [--quick]
        [--seeds N | --seed K] [--corpus DIR] [--stage1 PARAMS_DIR [--llm-states FILE]] [--eval-dialogues N]
        [--answers reference]

The grid file is plain Python defining MASKING, DENOISE_STEPS, BLOCK_SIZE (sequences) and optionally
DISTILL ((masking, alpha) pairs: the paper's distillation), DISTILL_FROM (the stage II maskings
distilled), DISTILL_ROUNDS (ours, SDTT), AFTER_EOS (`mask.after_eos` values, '' the default: a
Talker with another is named mdm-<masking>-b<B>-<value>...), AR_REFERENCE (bool), CLAIMS and PAPER: see
experiments/grids/. Seed k (the initial params, data order and masks of every stage) trains in
OUT/seed<k>: its own stage I, LLM states and every Talker in a workdir named by its settings
(mdm-<masking>-b<B>, mdm-<masking>-b<B>-distill-<masking>-a<alpha>, mdm-<masking>-b<B>-sdtt<r>,
ar-b<B>) through `recipe.run_stage`, so a rerun resumes or reuses it, and a rerun with more seeds
adds seeds; its evaluated rows (with per-dialogue counts) are kept there (eval_rows.jsonl) and not
recomputed. `--stage1` starts every seed from an existing stage I (e.g. a demo's OUT/stage1/params,
whatever its block size) instead of training one per seed; `--llm-states` reuses its states cache.
`--answers reference` decodes speech from the LLM's states on the reference answer (teacher-forced)
instead of its own greedy answer: the speech decoder alone, even under a weak stage I.

Writes, in OUT/<the grid file's name> (grids share OUT's Talkers where their names agree),
results.csv, results.json (rows and claims), results.md (the tables), quality_vs_steps.png (unit
accuracy and WER vs steps per strategy), speed_vs_quality.png (tokens/s vs unit accuracy, the
frontier) and, for a grid with claims, claims.png (each claim's paired difference). Metrics as in
the demo: unit accuracy and length ratio against the reference answer's units, WER of the
resynthesised speech (the demo's flow-matching token2wav, trained once into OUT/token2wav.msgpack
unless one is there, + the Whisper tiny.en judge) against the reference answer for AR and for MDM
at the budget's `wer_steps` (the judge is the cost), tokens/s of the speech decoder alone (batch 1,
after warm-up), speed-up vs the AR decoder. Speeds are means over seeds.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import runpy
import time
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from experiments import recipe
from experiments.eval_data import fit_flow_token2wav, held_out, reference_answers, spoken_answers
from mdm_jax.config.mask import AFTER_EOS, STRATEGIES
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.sampler import SamplerConfig
from mdm_jax.config.train import get_train_config
from mdm_jax.convert.params_io import load_params
from mdm_jax.eval.intervals import Counts, called, difference, fmt, interval
from mdm_jax.eval.metrics import decode_speech, speech_wer, text_accuracy, unit_accuracy

COLUMNS = ("decoder", "method", "masking", "block_size", "distillation", "denoise_steps", "unit_accuracy",
           "unit_accuracy_lo", "unit_accuracy_hi", "length_ratio", "wer", "wer_lo", "wer_hi", "tokens_per_s",
           "first_chunk_s", "speedup_vs_ar", "seeds", "eval_dialogues", "answers")
LEVEL = 0.03  # a "level" claim holds when the paired unit-accuracy difference lies within +- this


@dataclasses.dataclass(frozen=True)
class Grid:
    masking: tuple[str, ...]  # stage II masking of each MDM Talker
    denoise_steps: tuple[int, ...]  # an evaluation axis
    block_size: tuple[int, ...]
    distill: tuple[tuple[str, float], ...] = ()  # the paper's distillation: (its masking, alpha) per variant
    distill_from: tuple[str, ...] = ()  # the stage II maskings whose Talkers are distilled (empty: all)
    distill_rounds: tuple[int, ...] = (0,)  # ours (SDTT) with r > 0 rounds; 0: the stage II Talker itself
    after_eos: tuple[str, ...] = ("",)  # `mask.after_eos` of each MDM Talker and its distillation ('': the default)
    ar_reference: bool = True
    # (claim, row a, row b, "above" | "level"), a row being (decoder name, denoising steps or None): a
    # paired comparison of a and b on unit accuracy that the sweep judges
    claims: tuple[tuple[str, tuple, tuple, str], ...] = ()
    paper: tuple[tuple[str, str], ...] = ()  # (decoder name, the paper's figures for it): shown beside ours


def load_grid(path: str) -> Grid:
    """A grid file's UPPER_CASE names (_PRIVATE ones are its own) -> Grid (unknown or missing names raise)."""
    names = {k.lower(): v for k, v in runpy.run_path(path).items() if k.isupper() and not k.startswith("_")}
    fields = {f.name for f in dataclasses.fields(Grid)}
    if set(names) - fields:
        raise ConfigError(f"{path}: unknown grid names {sorted(k.upper() for k in set(names) - fields)}")
    try:
        grid = Grid(**{k: v if isinstance(v, bool) else tuple(v) for k, v in names.items()})
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None
    unknown = (set(grid.masking) | {m for m, _ in grid.distill} | set(grid.distill_from)) - set(STRATEGIES)
    if unknown:  # fail before hours of training, not at the first step of that decoder
        raise ConfigError(f"{path}: unknown masking {sorted(unknown)}")
    if set(grid.after_eos) - {"", *AFTER_EOS}:
        raise ConfigError(f"{path}: AFTER_EOS {grid.after_eos}; expected '' (the default) or one of {AFTER_EOS}")
    block = get_train_config(recipe.PRESET).model.speech_decoder.block_size  # the AR reference's
    rows = {(d.name, s.denoise_steps if s.method == "mdm" else None) for d, s in evaluated(grid, decoders(grid, block))}
    for claim, a, b, expected in grid.claims:
        if {tuple(a), tuple(b)} - rows or expected not in ("above", "level"):
            raise ConfigError(f"{path}: claim {claim!r} compares {a} and {b} ({expected!r}): not rows of this grid, "
                              "or expected is not 'above' or 'level'")
    return grid


@dataclasses.dataclass(frozen=True)
class Decoder:
    """One trained Talker of the sweep: AR, or MDM trained with `masking`, then possibly distilled: the
    paper's way (`distill_masking`, `alpha`) or ours (`distill_rounds` SDTT rounds)."""

    method: str  # ar | mdm
    block_size: int
    masking: str = ""
    after_eos: str = ""  # '': the config's default
    distill_rounds: int = 0
    distill_masking: str = ""
    alpha: float = 0.0

    @property
    def name(self) -> str:  # its workdir under OUT
        if self.method == "ar":
            return f"ar-b{self.block_size}"
        eos = self.after_eos and f"-{self.after_eos}"
        return f"mdm-{self.masking}-b{self.block_size}{eos}{self.distillation and '-' + self.distillation}"

    @property
    def distillation(self) -> str:
        """'' (the stage II Talker), 'sdtt<r>' or 'distill-<masking>-a<alpha>'."""
        if self.distill_rounds:
            return f"sdtt{self.distill_rounds}"
        return f"distill-{self.distill_masking}-a{self.alpha:g}" if self.distill_masking else ""

    @property
    def teacher(self) -> Decoder:  # the stage II Talker a distilled one starts from
        return dataclasses.replace(self, distill_rounds=0, distill_masking="", alpha=0.0)


def decoders(grid: Grid, default_block: int) -> list[Decoder]:
    """Every decoder to train, each after the one it starts from (AR first: the speed reference)."""
    out = [Decoder("ar", default_block)] if grid.ar_reference else []
    for block in grid.block_size:
        for masking in grid.masking:
            for eos in grid.after_eos:
                stage2 = Decoder("mdm", block, masking, eos)
                out.append(stage2)
                if masking in (grid.distill_from or grid.masking):
                    rounds = sorted(set(grid.distill_rounds) - {0})
                    out += [dataclasses.replace(stage2, distill_rounds=r) for r in rounds]
                    out += [dataclasses.replace(stage2, distill_masking=m, alpha=a) for m, a in grid.distill]
    return out


def evaluated(grid: Grid, todo: list[Decoder]) -> list[tuple[Decoder, SamplerConfig]]:
    """The rows: AR once, every MDM decoder (stage II ones if 0 is among the grid's rounds) at every
    denoising steps value."""
    keep = lambda d: d.method == "ar" or d.distill_masking or d.distill_rounds in grid.distill_rounds
    return [(d, SamplerConfig(method="ar")) if d.method == "ar" else (d, SamplerConfig(denoise_steps=s))
            for d in todo if keep(d) for s in ((None,) if d.method == "ar" else grid.denoise_steps)]


def train(todo: list[Decoder], out: Path, base: list[str], budget: recipe.Budget, stage1: str,
          log=tqdm.write) -> dict[Decoder, str]:
    """Train (or resume, or reuse) every decoder; -> its exported params folder."""
    exported = {}
    for d in tqdm(todo, desc="sweep: train", unit="decoder"):
        if d.method == "ar":
            stage, init = recipe.stage_overrides("ar", budget), stage1
        elif d.distillation:
            stage = recipe.stage_overrides("distill", budget, masking=d.distill_masking or None,
                                           block_size=d.block_size, alpha=d.alpha, sdtt_rounds=d.distill_rounds)
            init = exported[d.teacher]
        else:  # stage I's params serve any block size: it changes how the decoder runs, not its params
            stage, init = recipe.stage_overrides("mdm", budget, masking=d.masking, block_size=d.block_size), stage1
        eos = [f"mask.after_eos={d.after_eos}"] if d.after_eos else []
        exported[d] = recipe.run_stage(str(out / d.name), base + stage + eos + [f"init_from={init}"], log=log)
    return exported


def references(out: Path, corpus_dir: str, corpus: dict, budget: recipe.Budget, eval_dialogues: int,
               block: int) -> dict:
    """What every seed is evaluated against: the held-out records, their reference texts and units, the
    trained token2wav and its ceiling (the reference units resynthesised and judged)."""
    refs = held_out(corpus_dir, corpus, eval_dialogues)
    t2w = fit_flow_token2wav(corpus_dir, corpus, str(out / "token2wav.msgpack"), budget.token2wav_train_steps, block,
                             small=budget is recipe.QUICK)
    return {**refs, "t2w": t2w, "ceiling": speech_wer(refs["units"], refs["texts"], t2w)["counts"]}


def evaluate(seed_out: Path, corpus_dir: str, refs: dict, stage1: str, trained: dict[Decoder, str], grid: Grid,
             budget: recipe.Budget, answers: str, log=tqdm.write) -> tuple[list[dict], dict | None]:
    """One seed's Talkers -> (its rows in `evaluated` order, each with its per-dialogue counts; the text
    accuracy counts of its LLM's answers, or None for reference answers). A decoder's rows are kept beside
    its params in <decoder>/eval_rows.jsonl, appended as they finish, and reused for the same dialogues and
    answers: retraining a decoder (removing its workdir) drops them too."""
    params, cfg = load_params(stage1)
    records, references, dialogues = refs["records"], refs["texts"], len(refs["records"])
    text = None
    if answers == "spoken":
        spoken, texts = spoken_answers(params, cfg, corpus_dir, records)
        hiddens, text = [a.hidden for a in spoken], text_accuracy(texts, references)["counts"]
    else:
        hiddens = reference_answers(params, cfg, corpus_dir, records)
    max_tokens = budget.max_blocks * get_train_config(recipe.PRESET).model.speech_decoder.block_size
    loaded, rows = {}, []
    for d, sampler in tqdm(evaluated(grid, list(trained)), desc=f"{seed_out.name}: evaluate", unit="row"):
        steps = sampler.denoise_steps if sampler.method == "mdm" else None
        cache = seed_out / d.name / "eval_rows.jsonl"
        key = (steps, dialogues, answers)
        cached = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
        row = next((r for r in cached if (r["denoise_steps"], r["eval_dialogues"], r["answers"]) == key), None)
        if row is not None:
            rows.append(row)
            continue
        if d not in loaded:  # one decoder's params at a time
            loaded = {d: load_params(trained[d])}
        dec, dec_cfg = loaded[d][0]["speech_decoder"], dataclasses.replace(loaded[d][1], sampler=sampler)
        block = dec_cfg.speech_decoder.block_size
        speech = decode_speech(dec, dec_cfg, hiddens, max_blocks=-(-max_tokens // block))
        accuracy = unit_accuracy(speech["units"], refs["units"])
        counts = {"unit_accuracy": accuracy["counts"]}
        if d.method == "ar" or steps in budget.wer_steps:
            counts["wer"] = speech_wer(speech["units"], references, refs["t2w"])["counts"]
        row = {"decoder": d.name, "method": d.method, "masking": d.masking, "block_size": block,
               "distillation": d.distillation, "denoise_steps": steps, "length_ratio": accuracy["length_ratio"],
               "tokens_per_s": speech["tokens_per_s"], "first_chunk_s": speech["first_chunk_s"],
               "eval_dialogues": dialogues, "answers": answers,
               "counts": {k: c.to_json() for k, c in counts.items()}}
        log(f"{seed_out.name} {d.name} S={steps}: unit acc {counts['unit_accuracy'].value:.3f}, "
            f"{row['tokens_per_s']:.0f} tokens/s")
        rows.append(row)
        with cache.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return rows, text


def pool(seeds: list[list[dict]]) -> tuple[list[dict], dict[tuple, dict[str, Counts]]]:
    """Every seed's rows -> (rows with figures pooled over seeds and dialogues, speeds and lengths as means
    over seeds; the pooled counts by (decoder, steps) for paired comparisons)."""
    rows, counts = [], {}
    for per_seed in zip(*seeds):  # one row of every seed
        key = (per_seed[0]["decoder"], per_seed[0]["denoise_steps"])
        counts[key] = {k: Counts.pool([Counts.from_json(r["counts"][k]) for r in per_seed])
                       for k in per_seed[0]["counts"]}
        row = {k: v for k, v in per_seed[0].items() if k != "counts"}
        row.update({k: float(np.mean([r[k] for r in per_seed])) for k in ("length_ratio", "tokens_per_s",
                                                                          "first_chunk_s")})
        row.update(_figure("unit_accuracy", counts[key]["unit_accuracy"]))
        row.update(_figure("wer", counts[key]["wer"]) if "wer" in counts[key] else
                   {"wer": None, "wer_lo": None, "wer_hi": None})
        rows.append({**row, "seeds": len(per_seed)})
    ar = next((r["tokens_per_s"] for r in rows if r["method"] == "ar"), None)
    for r in rows:
        r["speedup_vs_ar"] = r["tokens_per_s"] / ar if ar else None
    return rows, counts


def judge(grid: Grid, counts: dict[tuple, dict[str, Counts]]) -> list[dict]:
    """Each claim of the grid: the paired difference a - b on unit accuracy (and on WER where both rows are
    judged) over the same seeds and dialogues, and its verdict: 'holds', 'reversed' (a below b where it
    should be above; a apart from b where it should be level) or 'not separable at our scale'."""
    out = []
    for claim, a, b, expected in grid.claims:
        ca, cb = counts[tuple(a)], counts[tuple(b)]
        diff = difference(ca["unit_accuracy"], cb["unit_accuracy"])
        if expected == "above":
            verdict = {1: "holds", -1: "reversed", 0: "not separable at our scale"}[called(diff)]
        elif -LEVEL <= diff["lo"] and diff["hi"] <= LEVEL:
            verdict = f"holds (within +-{LEVEL})"
        elif called(diff):
            verdict = f"reversed ({'above' if called(diff) > 0 else 'below'})"
        else:
            verdict = f"not separable at our scale (interval wider than +-{LEVEL})"
        wer = difference(ca["wer"], cb["wer"]) if "wer" in ca and "wer" in cb else None
        out.append({"claim": claim, "a": list(a), "b": list(b), "expected": expected, "unit_accuracy": diff,
                    "wer": wer, "verdict": verdict})
    return out


def _figure(name: str, counts: Counts) -> dict:
    """name, name_lo, name_hi: the figure and its 95 % bootstrap interval over dialogues."""
    f = interval(counts)
    return {name: f["value"], f"{name}_lo": f["lo"], f"{name}_hi": f["hi"]}


def write_csv(rows: list[dict], path: Path):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)


def markdown(rows: list[dict], claims: list[dict], header: dict, grid: Grid) -> str:
    text = header["text_accuracy"]
    ceiling = header["reference_units_wer"]
    source = ("the LLM's states on the reference answers (teacher-forced)" if text is None else
              f"the LLM's greedy answers (text accuracy {fmt(text)}, the same for every row)")
    lines = [f"Held-out test dialogues: {header['eval_dialogues']}, seeds: {header['seeds']}, device: "
             f"{header['device']}, budget: {header['budget']}, wall time of this invocation "
             f"{header['wall_s'] / 60:.1f} min. Speech decoded from {source}. WER of resynthesised reference units "
             f"(ceiling): {fmt(ceiling)}. Brackets: 95 % bootstrap intervals over seeds and dialogues.", "",
             "| decoder | masking | block | distillation | denoising steps | unit acc | length ratio | WER | "
             "tokens/s | speed-up vs AR |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = "-" if r["speedup_vs_ar"] is None else f"{r['speedup_vs_ar']:.2f}x"
        lines.append(f"| {r['method']} | {r['masking'] or '-'} | {r['block_size']} | {r['distillation'] or '-'} | "
                     f"{r['denoise_steps'] or '-'} | {fmt(_of(r, 'unit_accuracy'))} | {r['length_ratio']:.2f} | "
                     f"{fmt(_of(r, 'wer'))} | {r['tokens_per_s']:.0f} | {speedup} |")
    if grid.paper:  # the paper's layout: a Talker per line, its figures beside ours at each step count
        steps = sorted({r["denoise_steps"] for r in rows if r["denoise_steps"]})
        lines += ["", "| Talker | the paper's WER (its scale) | " + " | ".join(f"unit acc S={s}" for s in steps)
                  + " | WER S=" + ", ".join(map(str, budget_wer_steps(rows))) + " |",
                  "|---|---|" + "---|" * len(steps) + "---|"]
        for name, paper in grid.paper:
            mine = {r["denoise_steps"]: r for r in rows if r["decoder"] == name}
            cells = [fmt(_of(mine[s], "unit_accuracy")) if s in mine else "-" for s in steps]
            if None in mine:  # AR: one row at every step count
                cells = [fmt(_of(mine[None], "unit_accuracy"))] * len(steps)
            wer = " / ".join(f"{r['wer']:.3f}" for _, r in sorted(mine.items(), key=lambda x: x[0] or 0)
                             if r["wer"] is not None)
            lines.append(f"| {name} | {paper} | " + " | ".join(cells) + f" | {wer or '-'} |")
    if claims:
        lines += ["", f"Claims (paired differences a - b on unit accuracy; 'level': within +-{LEVEL}):", "",
                  "| claim | a | b | unit acc a - b | WER a - b | verdict |", "|---|---|---|---|---|---|"]
        for c in claims:
            lines.append(f"| {c['claim']} | {_row(c['a'])} | {_row(c['b'])} | {fmt(c['unit_accuracy'], sign=True)} "
                         f"| {fmt(c['wer'], sign=True)} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def budget_wer_steps(rows: list[dict]) -> list[int]:
    """The MDM step counts whose rows were judged by ASR."""
    return sorted({r["denoise_steps"] for r in rows if r["denoise_steps"] and r["wer"] is not None})


def _row(row: list) -> str:
    name, steps = row
    return name if steps is None else f"{name} S={steps}"


def _of(row: dict, name: str) -> dict | None:
    """A row's flat `name`, `name`_lo, `name`_hi (its CSV columns) -> the figure, None where not measured."""
    return None if row[name] is None else {"value": row[name], "lo": row[f"{name}_lo"], "hi": row[f"{name}_hi"]}


def plot(rows: list[dict], header: dict, out: Path):
    """quality_vs_steps.png (a column per block size) and speed_vs_quality.png (with the frontier)."""
    mdm = [r for r in rows if r["method"] == "mdm"]
    ar = [r for r in rows if r["method"] == "ar"]
    strategies = sorted({r["masking"] for r in mdm})
    color = {s: f"C{i}" for i, s in enumerate(strategies)}
    variants = sorted({r["distillation"] for r in mdm})  # '' (stage II) first
    style = {v: ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3)))[i % 6] for i, v in enumerate(variants)}
    marker = {v: "os^Dvp"[i % 6] for i, v in enumerate(variants)}
    blocks = sorted({r["block_size"] for r in mdm})
    metrics = (("unit_accuracy", "unit accuracy (higher is better)"), ("wer", "WER (lower is better)"))
    fig = Figure(figsize=(5 * len(blocks), 7))  # no pyplot: no GUI backend, no global figure state
    axes = fig.subplots(2, len(blocks), squeeze=False)
    for col, block in enumerate(blocks):
        for row, (metric, name) in enumerate(metrics):
            ax = axes[row, col]
            for s in strategies:
                for v in variants:
                    line = sorted((x["denoise_steps"], x[metric], x[f"{metric}_lo"], x[f"{metric}_hi"]) for x in mdm
                                  if (x["masking"], x["distillation"], x["block_size"]) == (s, v, block)
                                  and x[metric] is not None)
                    if line:
                        steps, value, lo, hi = map(np.array, zip(*line))
                        ax.errorbar(steps, value, yerr=[value - lo, hi - value], linestyle=style[v], marker=marker[v],
                                    color=color[s], capsize=2, label=f"{s}, {v or 'stage II'}")
            for x in ar:
                ax.axhline(x[metric], color="gray", lw=1, ls="--", label="AR")
            if metric == "wer":
                ax.axhline(header["reference_units_wer"]["value"], color="black", lw=1, ls=":",
                           label="reference units")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sampler steps per block")
            ax.set_ylabel(name)
            ax.set_title(f"block {block}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.suptitle(f"quality vs steps, 95 % intervals ({header['device']}, {header['seeds']} seeds x "
                 f"{header['eval_dialogues']} dialogues)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_steps.png", dpi=120)

    speed = "speedup_vs_ar" if ar else "tokens_per_s"
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for r in rows:
        c = "gray" if r["method"] == "ar" else color[r["masking"]]
        ax.scatter(r[speed], r["unit_accuracy"], color=c, marker=marker.get(r["distillation"], "x"), s=30)
    for s in strategies:
        ax.scatter([], [], color=color[s], label=s)
    frontier, best = [], -np.inf  # points no faster point beats on quality, fastest first
    for r in sorted(rows, key=lambda r: -r[speed]):
        if r["unit_accuracy"] > best:
            frontier.append(r)
            best = r["unit_accuracy"]
    ax.plot([r[speed] for r in frontier], [r["unit_accuracy"] for r in frontier], "k-", lw=1, label="frontier")
    for r in frontier:
        label = "AR" if r["method"] == "ar" else f"S={r['denoise_steps']} B={r['block_size']} {r['distillation']}"
        ax.annotate(label, (r[speed], r["unit_accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("speech tokens/s vs AR (same run)" if ar else "speech tokens/s")
    ax.set_ylabel("unit accuracy")
    ax.set_title("speed vs quality (marker: " + ", ".join(f"{v or 'stage II'} {marker[v]}" for v in variants) + ")",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "speed_vs_quality.png", dpi=120)


def plot_claims(claims: list[dict], header: dict, out: Path):
    """claims.png: each claim's paired difference a - b on unit accuracy with its interval, the level band."""
    fig = Figure(figsize=(8, 0.5 * len(claims) + 1.5))
    ax = fig.subplots()
    for i, c in enumerate(claims):
        d = c["unit_accuracy"]
        color = "C2" if c["verdict"].startswith("holds") else "C3" if c["verdict"].startswith("reversed") else "C7"
        ax.errorbar(d["value"], i, xerr=[[d["value"] - d["lo"]], [d["hi"] - d["value"]]], fmt="o", color=color,
                    capsize=3)
    ax.axvline(0, color="black", lw=1)
    ax.axvspan(-LEVEL, LEVEL, color="gray", alpha=0.15, label=f"level (+-{LEVEL})")
    ax.set_yticks(range(len(claims)), [f"{c['claim'][:60]}\n{_row(c['a'])} - {_row(c['b'])}" for c in claims],
                  fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("unit accuracy a - b (paired, 95 % interval); green holds, red reversed, gray not separable")
    ax.set_title(f"the paper's claims at our scale ({header['seeds']} seeds x {header['eval_dialogues']} dialogues)",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "claims.png", dpi=120, bbox_inches="tight")  # the claims' long labels whole


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="grid file (plain Python), e.g. experiments/grids/masking.py")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--quick", action="store_true", help="the demo's QUICK budget: a smoke run")
    parser.add_argument("--seeds", type=int, default=1, help="train and evaluate seeds 0..N-1 (OUT/seed<k>), pooled")
    parser.add_argument("--seed", type=int, help="train and evaluate this seed alone, no report: seeds in parallel "
                        "processes (or machines sharing OUT); a later --seeds N run pools their cached rows")
    parser.add_argument("--corpus", help="corpus folder (default: data/embedded, or OUT/corpus with --quick)")
    parser.add_argument("--stage1", help="stage I params folder every seed starts from instead of training its own")
    parser.add_argument("--llm-states", help="the LLM-states cache of --stage1's params (default: computed once)")
    parser.add_argument("--eval-dialogues", type=int, help="held-out dialogues evaluated (default: the budget's)")
    parser.add_argument("--answers", choices=("spoken", "reference"), default="spoken",
                        help="decode speech from the LLM's greedy answers (the demo) or the reference answers")
    args = parser.parse_args(argv)
    if args.llm_states and not args.stage1:
        parser.error("--llm-states needs the --stage1 it was computed from")
    if args.seeds < 1 or (args.seed is not None and args.seed < 0):
        parser.error("--seeds must be at least 1, --seed at least 0")
    start = time.perf_counter()
    grid = load_grid(args.grid)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = recipe.QUICK if args.quick else recipe.FULL
    corpus_dir = args.corpus or (str(out / "corpus") if args.quick else "data/embedded")
    corpus = recipe.prepare_corpus(corpus_dir, budget, log=tqdm.write)
    block = get_train_config(recipe.PRESET, recipe.model_overrides(corpus, budget)).model.speech_decoder.block_size
    refs = references(out, corpus_dir, corpus, budget, args.eval_dialogues or budget.eval_dialogues, block)
    seeds, texts = [], []
    for seed in range(args.seeds) if args.seed is None else (args.seed,):
        seed_out = out / f"seed{seed}"
        base = recipe.model_overrides(corpus, budget) + recipe.data_overrides(corpus_dir, budget, seed)
        stage1 = args.stage1 or recipe.run_stage(
            str(seed_out / "stage1"), base + recipe.stage_overrides("stage1", budget)
            + [f"init_from={recipe.initial_params(str(seed_out / 'init'), base)}"], log=tqdm.write)
        states = args.llm_states or recipe.llm_states(str(seed_out / "llm_states.npz"), stage1, base)
        trained = train(decoders(grid, block), seed_out, base + [f"data.llm_states={states}"], budget, stage1)
        rows, text = evaluate(seed_out, corpus_dir, refs, stage1, trained, grid, budget, args.answers)
        seeds.append(rows)
        texts.append(text)
    if args.seed is not None:
        print(f"seed {args.seed}: {len(seeds[0])} rows in {out}/seed{args.seed}/*/eval_rows.jsonl; "
              "`--seeds N` pools them into the report")
        return
    rows, counts = pool(seeds)
    claims = judge(grid, counts)
    header = {"text_accuracy": None if args.answers == "reference" else interval(Counts.pool(texts)),
              "reference_units_wer": interval(refs["ceiling"]), "seeds": args.seeds,
              "device": f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {os.cpu_count()} cores)",
              "budget": "QUICK" if args.quick else "FULL", "eval_dialogues": len(refs["records"]),
              "wall_s": time.perf_counter() - start}
    report = out / Path(args.grid).stem
    report.mkdir(exist_ok=True)
    write_csv(rows, report / "results.csv")
    (report / "results.json").write_text(json.dumps({"header": header, "rows": rows, "claims": claims}, indent=1))
    (report / "results.md").write_text(markdown(rows, claims, header, grid))
    plot(rows, header, report)
    if claims:
        plot_claims(claims, header, report)
    print(markdown(rows, claims, header, grid))
    print(f"wrote results.csv, results.json, results.md, quality_vs_steps.png, speed_vs_quality.png"
          f"{', claims.png' if claims else ''} in {report}")


if __name__ == "__main__":
    main()
