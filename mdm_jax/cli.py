"""Command line: `python -m mdm_jax.cli {info,convert} ...` (see --help of each)."""

from __future__ import annotations

import argparse
import sys

from mdm_jax.config import config_keys, get_config


def _info(args):
    cfg = get_config(args.config, args.overrides)
    from mdm_jax.vocalnet import count_params

    print(cfg.to_json())
    for name, n in count_params(cfg).items():
        print(f"{name:>16}: {n:,}")


def _convert(args):
    from mdm_jax.convert.hf_files import load_hf_folder
    from mdm_jax.params_io import save_params

    hf_config, state = load_hf_folder(args.src)
    if args.kind == "hf-llm":
        from mdm_jax.convert import llm_config_from_hf, llm_from_hf

        cfg = llm_config_from_hf(hf_config)
        params = llm_from_hf(state, cfg)
    else:
        from mdm_jax.convert.vocalnet_release import vocalnet_from_release

        cfg = get_config(args.config, args.overrides)
        params = vocalnet_from_release(state, cfg)
    out = save_params(args.out, params, cfg)
    print(f"wrote {out} ({type(cfg).__name__}, {len(state)} tensors)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print a preset (with overrides) and its parameter counts",
                          epilog="config keys: " + ", ".join(config_keys(get_config("tiny"))))
    info.add_argument("--config", default="tiny")
    info.add_argument("overrides", nargs="*", metavar="key=value")
    info.set_defaults(run=_info)

    conv = sub.add_parser("convert", help="convert a Hugging Face / VocalNet folder into an mdm_jax checkpoint")
    conv.add_argument("kind", choices=["hf-llm", "vocalnet"],
                      help="hf-llm: LLaMA 3.x / Qwen2 text model; vocalnet: a whole VocalNet release")
    conv.add_argument("--src", required=True, help="folder with config.json and *.safetensors")
    conv.add_argument("--out", required=True)
    conv.add_argument("--config", default="vocalnet-1b", help="preset of the VocalNet release (kind vocalnet)")
    conv.add_argument("overrides", nargs="*", metavar="key=value")
    conv.set_defaults(run=_convert)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as e:  # config / conversion errors: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
