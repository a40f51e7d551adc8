"""Token2wav time per speech block: CosyVoice2-0.5B's flow + HiFT at real size (random weights: the
time does not depend on their values), streamed as the Talker emits blocks, so the first packet can be
decomposed like the paper's (vocoder 225.6 ms of 368.67 ms on its GPU).

    python -m experiments.bench_token2wav --hops 16,15,25 --out runs/bench/token2wav.json
    python -m experiments.bench_token2wav --small ...     # reduced sizes, a smoke run

Per hop h (16: our Talker's block, 15: VocalNet's chunk, 25: CosyVoice2's own), units arrive h at a
time for `--blocks` blocks, then the stream is finalised. Each chunk is timed split into the flow
(re-run over every unit so far, 10 Euler steps with guidance = 20 estimator passes) and HiFT; one
untimed stream first compiles every shape. first_packet_s = the flow + HiFT time of the first chunk
(the chunk that needs h + 3 look-ahead units); rtf = compute seconds / audio seconds. Imports no
librosa (runs on the GPU machine as it is).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import numpy as np

from experiments.json_out import write_json
from mdm_jax.vocoder import cosyvoice_flow, hift
from mdm_jax.vocoder.cosyvoice2 import CosyVoice2Token2Wav

SMALL = (cosyvoice_flow.CosyFlowConfig(encoder_ffn=256, encoder_blocks=1, decoder_channels=64, decoder_heads=2,
                                       decoder_head_dim=32, decoder_blocks=1, decoder_mid_blocks=2),
         hift.HiFTConfig(base_channels=64, f0_cond_channels=32))


def run_stream(t2w: CosyVoice2Token2Wav, units: np.ndarray, hop: int) -> list[dict]:
    """Push `units` `hop` at a time, then finalise -> per chunk: units pushed so far, flow s, HiFT s, audio s."""
    stream, rows = t2w.stream(hop), []
    for i in range(0, len(units) + 1, hop):
        final = i >= len(units)
        audio = stream.push(units[i : i + hop], final=final)
        for flow_s, hift_s in stream.times[len(rows):]:
            rows.append({"units_in": min(i + hop, len(units)), "flow_s": flow_s, "hift_s": hift_s,
                         "audio_s": len(audio) / t2w.sample_rate, "final": final})
    return rows


def bench(t2w: CosyVoice2Token2Wav, hop: int, blocks: int) -> dict:
    units = np.random.default_rng(0).integers(0, t2w.flow_config.vocab_size, hop * blocks)
    run_stream(t2w, units, hop)  # compiles every shape of this hop
    chunks = run_stream(t2w, units, hop)
    compute = sum(c["flow_s"] + c["hift_s"] for c in chunks)
    return {"hop": hop, "blocks": blocks, "chunks": chunks,
            "first_packet_s": chunks[0]["flow_s"] + chunks[0]["hift_s"],
            "first_flow_s": chunks[0]["flow_s"], "first_hift_s": chunks[0]["hift_s"],
            "median_chunk_s": statistics.median(c["flow_s"] + c["hift_s"] for c in chunks),
            "rtf": compute / (len(units) * t2w.samples_per_unit / t2w.sample_rate)}


def print_table(rows: list[dict], device: str, sizes: str) -> None:
    print(f"token2wav per block ({sizes}, {device}): flow + HiFT, warm")
    print("| hop (units) | first packet ms | flow ms | HiFT ms | median chunk ms | RTF |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hop']} | {1e3 * r['first_packet_s']:.0f} | {1e3 * r['first_flow_s']:.0f} | "
              f"{1e3 * r['first_hift_s']:.0f} | {1e3 * r['median_chunk_s']:.0f} | {r['rtf']:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hops", default="16,15,25", help="units per pushed block")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per utterance")
    parser.add_argument("--small", action="store_true", help="reduced sizes (a smoke run), not CosyVoice2-0.5B's")
    parser.add_argument("--out", default="runs/bench/token2wav.json")
    args = parser.parse_args(argv)
    flow_cfg, hift_cfg = SMALL if args.small else (cosyvoice_flow.CosyFlowConfig(), hift.HiFTConfig())
    t2w = CosyVoice2Token2Wav(cosyvoice_flow.init_params(flow_cfg), flow_cfg, hift.init_params(hift_cfg), hift_cfg,
                              np.zeros(flow_cfg.spk_embed_dim, np.float32))
    rows = [bench(t2w, int(h), args.blocks) for h in args.hops.split(",")]
    device, sizes = str(jax.devices()[0].device_kind), "reduced" if args.small else "CosyVoice2-0.5B"
    print_table(rows, device, sizes)
    write_json(args.out, {"device": device, "sizes": sizes, "rows": rows})


if __name__ == "__main__":
    main()
