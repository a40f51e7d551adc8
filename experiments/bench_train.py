"""Training-step benchmark: masked diffusion (vectorised `[x_t ; x_0]`, sampler-state masking) vs
AR vs MTP on the speech decoder, at equal speech length L, random weights and random data.

    python -m experiments.bench_train --out runs/bench/train.json [--repeats 3]

One step = loss + grad + optax adamw update, jitted, params and optimizer state donated. Time =
median of `--repeats` rounds after a warm-up (compile) round, each round running every objective
once, so the ratios come from one process on one machine under the same load. AR and MDM train the decoder without MTP
modules (they use none); MTP trains the decoder with the preset's modules.

Shapes. `tiny`: the preset's decoder, batch 4, 40 text states, 8 speech blocks. `1b`: the
widths of `vocalnet-1b` (d 2048, 32 heads, FFN 8192, 6561 units) at reduced depth (pre-NN 1,
decoder 2, MTP 2 instead of 2, 4, 5: the full MTP model's params, grads and adam moments need
~16 GB and its steps tens of seconds on CPU), batch 1, 20 text states, L = 60 (4 blocks); float32
compute (the preset's bfloat16 is slower on CPU). At this size the CPU step is dominated by work
per parameter (adamw, weight reads), not per token; the tiny shape shows the per-token costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mdm_jax.config.mask import MaskConfig
from mdm_jax.config.model import ModelConfig, SpeechDecoderConfig, get_config
from mdm_jax.diffusion.attention_masks import autoregressive_mask
from mdm_jax.diffusion.losses import mdm_loss, mtp_loss
from mdm_jax.diffusion.masking import sampler_states_mask
from mdm_jax.model.denoiser import denoiser
from mdm_jax.model.speech_decoder import SpeechDecoder

SHAPES = {  # preset, speech-decoder overrides, batch, text states, speech blocks
    "tiny": ("tiny", [], 4, 40, 8),
    "1b": ("vocalnet-1b", ["speech_decoder.prenn_layers=1", "speech_decoder.num_layers=2",
                           "speech_decoder.mtp_modules=2"], 1, 20, 4),
}
OBJECTIVES = ("ar", "mtp", "mdm")


def random_batch(cfg: SpeechDecoderConfig, batch: int, text: int, blocks: int, seed: int = 0):
    """Streaming rows, every position valid: text_hidden (b, T, d), units (b, L)."""
    rng = np.random.default_rng(seed)
    length = blocks * cfg.block_size
    return {
        "text_hidden": jnp.asarray(rng.standard_normal((batch, text, cfg.d_model)).astype(np.float32)),
        "text_valid": jnp.ones((batch, text), bool),
        "streaming": jnp.ones((batch,), bool),
        "units": jnp.asarray(rng.integers(0, cfg.num_units, (batch, length)).astype(np.int32)),
        "speech_valid": jnp.ones((batch, length), bool),
    }


def loss_fn(objective: str, cfg: SpeechDecoderConfig):
    """(params, batch, key) -> (loss, metrics) of one objective."""
    if objective == "mdm":
        model = ModelConfig(speech_decoder=cfg)  # float32, no remat: as the AR and MTP losses below

        def mdm(params, batch, key):
            noisy = sampler_states_mask(key, batch["units"], batch["speech_valid"], MaskConfig(),
                                      block_size=cfg.block_size, mask_id=cfg.mask_id)
            logits = denoiser(model, batch)(params, noisy.tokens)
            return mdm_loss(logits, batch["units"], noisy, batch["speech_valid"])
        return mdm

    def causal(params, batch, key):
        b = batch["units"].shape[0]
        tokens = jnp.concatenate([jnp.full((b, 1), cfg.sos_id), batch["units"]], axis=1)  # [SOS] units
        mask, positions = autoregressive_mask(cfg.prefix_text(batch["text_valid"]), batch["speech_valid"],
                                              batch["streaming"], chunk_size=cfg.block_size,
                                              text_per_chunk=cfg.text_per_block)
        logits, mtp_logits, _ = SpeechDecoder(cfg).apply({"params": params}, batch["text_hidden"], tokens, mask,
                                                         positions, batch["text_valid"])
        valid = jnp.concatenate([jnp.ones((b, 1), bool), batch["speech_valid"]], axis=1)
        return mtp_loss([logits] if objective == "ar" else [logits, *mtp_logits], tokens, valid)  # AR: the main head
    return causal


def make_step(objective: str, cfg: SpeechDecoderConfig, opt, batch):
    """Jitted (params, opt_state, key) -> (params, opt_state, loss), params and state donated."""
    loss = loss_fn(objective, cfg)

    def step(params, opt_state, key):
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def time_steps(cfg: SpeechDecoderConfig, batch, repeats: int) -> dict:
    """Per objective: median step time over `repeats` rounds after a compile round. Each round
    runs every objective once, so load from elsewhere hits all of them alike."""
    opt = optax.adamw(1e-4)
    configs = {o: cfg if o == "mtp" else dataclasses.replace(cfg, mtp_modules=0) for o in OBJECTIVES}
    states = {}  # AR and MDM train the same param tree, so they share (and keep updating) one state
    for c in set(configs.values()):
        dummy = (jnp.zeros((1, 2, c.d_model)), jnp.zeros((1, 3), jnp.int32))
        params = nn.unbox(jax.jit(SpeechDecoder(c).init)(jax.random.key(0), *dummy)["params"])
        states[c] = (params, opt.init(params))
    steps = {o: make_step(o, c, opt, batch) for o, c in configs.items()}
    times = {o: [] for o in OBJECTIVES}
    for i in range(repeats + 1):  # round 0 compiles
        for o in OBJECTIVES:
            start = time.perf_counter()
            params, opt_state, value = jax.block_until_ready(steps[o](*states[configs[o]], jax.random.key(i)))
            times[o].append(time.perf_counter() - start)
            states[configs[o]] = (params, opt_state)
    return {o: {"median_s": statistics.median(t[1:]), "runs_s": t[1:], "compile_and_first_s": t[0],
                "params": sum(p.size for p in jax.tree.leaves(states[configs[o]][0]))} for o, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench/train.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    report = {"device": f"{device.platform}: {device.device_kind}", "cpu_count": os.cpu_count(), "shapes": {}}
    print(f"device {report['device']}, {report['cpu_count']} CPUs")
    print(f"{'shape':6} {'batch':>5} {'T':>4} {'L':>4} | {'AR ms':>9} {'MTP ms':>9} {'MDM ms':>9} | MTP/AR MDM/AR")
    for name in args.shapes:
        preset, overrides, b, t, blocks = SHAPES[name]
        cfg = get_config(preset, overrides).speech_decoder
        batch = random_batch(cfg, b, t, blocks)
        steps = time_steps(cfg, batch, args.repeats)
        ratios = {f"{o}/ar": steps[o]["median_s"] / steps["ar"]["median_s"] for o in ("mtp", "mdm")}
        report["shapes"][name] = {"preset": preset, "overrides": overrides, "batch": b, "text": t,
                                  "speech_length": blocks * cfg.block_size, "steps": steps, "ratios": ratios}
        ms = {o: 1e3 * steps[o]["median_s"] for o in OBJECTIVES}
        print(f"{name:6} {b:5d} {t:4d} {blocks * cfg.block_size:4d} | {ms['ar']:9.1f} {ms['mtp']:9.1f} "
              f"{ms['mdm']:9.1f} | {ratios['mtp/ar']:6.2f} {ratios['mdm/ar']:6.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
