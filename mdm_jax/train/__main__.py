"""Command line: `python -m mdm_jax.train --config tiny --workdir runs/x key=value ...`.

Runs or resumes (same command) a training run; `--export DIR` writes its params for inference.
"""

from __future__ import annotations

import argparse
import json
import sys

from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import get_train_config, train_keys
from mdm_jax.train.checkpointing import SaveFailed
from mdm_jax.train.loop import TrainingDiverged, export, initialize_distributed, train


def main(argv=None):
    keys = "\n".join(f"  {k} ({t.__name__ if hasattr(t, '__name__') else t})" for k, t in train_keys().items())
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys:\n" + keys)
    parser.add_argument("--config", default="tiny", help="model preset: tiny, vocalnet-1b, vocalnet-8b, ...")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, tb/; rerun to resume")
    parser.add_argument("--export", metavar="DIR", help="write the latest checkpoint's params (LoRA merged) to DIR "
                        "for `mdm_jax.convert.params_io.load_params`, then exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        cfg = get_train_config(args.config, args.overrides)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    try:
        if args.export:
            print(f"exported {export(cfg, args.workdir, args.export)}")
            return
        initialize_distributed(cfg.distributed)
        print(json.dumps(train(cfg, args.workdir)))
    except ConfigError as e:  # bad input (config, data paths, init_from checkpoint): exit 2, as a bad argument
        parser.exit(2, f"error: {e}\n")
    except (TrainingDiverged, SaveFailed) as e:
        parser.exit(1, f"error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
