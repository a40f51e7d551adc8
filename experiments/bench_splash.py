"""What splash attention saves: the attention tiles its kernel computes against dense attention, from the
tile masks it is built with (`model.splash`: 128 x 128 tiles, one head), and the FLOPs that follow.

    python -m experiments.bench_splash --out runs/bench/splash.json

Rows: the MDM objective's `[x_t ; x_0]` layout of the paper's anchor Talker at 256 / 1024 / 2048 units and
of VocalNet's text-prefix Talker (1024 text states; with and without the streaming text limit), the
causal LLM at 1024 tokens, and packed rows of long-tailed lengths against the same examples one per row.
FLOPs per layer and row are counted, not timed: attention's two matmuls (4 t s d) dense or on the computed
tiles, and the layer's whole forward with its projections and MLP (8 t D^2 + 6 t D F for GQA-free sizes,
the 8B Talker's D = 4096, F = 12288), dense vs splash. No accelerator is used.
"""

from __future__ import annotations

import argparse

import numpy as np

from experiments.json_out import write_json
from mdm_jax.diffusion.attention_masks import Layout
from mdm_jax.model.splash import TILE, computed_tiles

D, F = 4096, 12_288  # the 8B presets' width and Talker FFN (vocalnet-mdm-qwen3-8b)


def layer_flops(t: int, s: int, fraction: float) -> dict:
    """Forward FLOPs of one transformer layer over t queries and s keys, attention on `fraction` of it."""
    attention = 4 * t * s * D
    rest = 8 * t * D * D + 6 * t * D * F
    return {"attention_dense": attention, "attention_splash": attention * fraction,
            "layer_dense": attention + rest, "layer_splash": attention * fraction + rest}


def mdm_row(talker: str, units: int, text: int = 1024, streaming: bool = False) -> dict:
    block, per_block = (16, 4) if talker == "anchor" else (15, 5)
    text = 0 if talker == "anchor" else text
    layout = Layout("block_diffusion", text, units, block, per_block, False)
    done, total = computed_tiles("layout", layout, 0, int(streaming))
    n = 2 + text + 2 * units
    name = f"MDM [x_t ; x_0], {talker} Talker" + (f", {text} text" if text else "") + (", streaming" if streaming
                                                                                         else "")
    return {"case": name, "units": units, "length": n, "tiles": done, "dense_tiles": total,
            "fraction": done / total, **layer_flops(n, n, done / total)}


def causal_row(length: int) -> dict:
    done, total = computed_tiles("causal", None, length)
    return {"case": "causal LLM", "units": 0, "length": length, "tiles": done, "dense_tiles": total,
            "fraction": done / total, **layer_flops(length, length, done / total)}


def long_tailed(count: int, row: int, seed: int = 0) -> list[list[int]]:
    """`count` lengths from a long-tailed (log-normal) distribution, best-fit packed into rows of `row`."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(row / 6), 0.9, count).astype(int), 16, row)
    rows: list[list[int]] = []
    for n in sorted(lengths, reverse=True):
        fits = [r for r in rows if sum(r) + n <= row]
        (min(fits, key=lambda r: row - sum(r) - n) if fits else rows.append([]) or rows[-1]).append(int(n))
    return rows


def packed_row(row: int, count: int) -> dict:
    """Causal attention over packed rows of `row` tokens: tiles computed (the whole row's causal tiles: the
    segment boundaries are data, not tile masks) against each example alone in its own row."""
    rows = long_tailed(count, row)
    packed = sum(computed_tiles("causal", None, row)[0] for _ in rows)
    alone = sum(computed_tiles("causal", None, n)[0] for r in rows for n in r)
    return {"case": f"packed causal rows of {row} ({count} long-tailed examples in {len(rows)} rows)",
            "units": 0, "length": row, "tiles": packed, "dense_tiles": len(rows) * (row // TILE) ** 2,
            "fraction": packed / (len(rows) * (row // TILE) ** 2), "one_per_row_tiles": alone,
            "packed_over_one_per_row": packed / alone}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench/splash.json")
    args = parser.parse_args(argv)
    rows = [*(mdm_row("anchor", u) for u in (256, 1024, 2048)),
            *(mdm_row("vocalnet", u, streaming=s) for u in (256, 1024, 2048) for s in (False, True)),
            causal_row(1024), causal_row(2048), packed_row(1024, 64), packed_row(2048, 64)]
    print(f"{'case':<62} {'length':>6} {'tiles':>6} {'of dense':>8} {'attn GFLOP':>16} {'layer GFLOP':>16}")
    for r in rows:
        flops = ""
        if "attention_dense" in r:
            flops = (f"{r['attention_dense'] / 1e9:>7.1f}->{r['attention_splash'] / 1e9:<7.1f} "
                     f"{r['layer_dense'] / 1e9:>7.1f}->{r['layer_splash'] / 1e9:<7.1f}")
        extra = (f"  packed / one per row: {r['packed_over_one_per_row']:.2f}x"
                 if "packed_over_one_per_row" in r else "")
        print(f"{r['case']:<62} {r['length']:>6} {r['tiles']:>6} {r['fraction']:>8.1%} {flops}{extra}")
    result = {"tile": TILE, "d_model": D, "ffn": F, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
