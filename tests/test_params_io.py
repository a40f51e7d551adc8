"""A broken params checkpoint (`params_io`) is one line naming the file and what is wrong: from
`load_params`, from the trainer's `init_from=`, `mdm_jax.cli generate --ckpt` and the voice page's
`--model` (each exit 2).
Loading the per-layer layout of older checkpoints: test_model."""

import json
import shutil
from pathlib import Path

import pytest
from small_train import small_overrides

from mdm_jax import cli, serve
from mdm_jax.config.train import get_train_config
from mdm_jax.convert.params_io import CheckpointError, load_params, save_params
from mdm_jax.model.vocalnet import random_params
from mdm_jax.train.__main__ import main as train_main

# a failed Orbax restore leaves its reading coroutines unawaited: noise, not a fault of the code under test
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _rewrite_config(folder: Path, edit):
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


def _truncate(file: Path):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _largest_data_file(folder: Path) -> Path:
    return max((p for p in (folder / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


BROKEN = {  # name -> (how the folder is broken, the file named, words of the message)
    "not_json": (lambda f: (f / "config.json").write_text("{'type': "), "config.json", "not JSON"),
    "json_list": (lambda f: (f / "config.json").write_text("[]"), "config.json", 'expected {"type"'),
    "unknown_type": (lambda f: _rewrite_config(f, lambda m: m.update(type="Whisper")), "config.json",
                     'expected {"type"'),
    "unknown_key": (lambda f: _rewrite_config(f, lambda m: m["config"].update(bogus=1)), "config.json",
                    "unknown config key 'bogus'"),
    "wrong_value": (lambda f: _rewrite_config(f, lambda m: m["config"]["llm"].update(d_model="wide")),
                    "config.json", "not a ModelConfig"),
    "no_params": (lambda f: shutil.rmtree(f / "params"), "", "is not a params checkpoint"),
    "empty_params": (lambda f: [shutil.rmtree(f / "params"), (f / "params").mkdir()], "params", "cannot be restored"),
    "truncated_tensor": (lambda f: _truncate(_largest_data_file(f)), "params", "cannot be restored"),
    "truncated_metadata": (lambda f: _truncate(f / "params" / "_METADATA"), "params", "cannot be restored"),
    "other_shapes": (lambda f: _rewrite_config(f, lambda m: m["config"]["llm"].update(ffn_dim=96)), "params",
                     "llm/layers/stacked/mlp/w_down stored (1, 64, 32), config.json implies (1, 96, 32)"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cfg = get_train_config("tiny", small_overrides()).model
    return save_params(tmp_path_factory.mktemp("ckpt") / "good", random_params(cfg), cfg)


@pytest.fixture(params=BROKEN)
def broken(request, good, tmp_path):
    folder = tmp_path / request.param
    shutil.copytree(good, folder)
    breaks, file, words = BROKEN[request.param]
    breaks(folder)
    return folder, str(folder / file) if file else str(folder), words


def test_the_good_checkpoint_loads(good):
    assert load_params(good)[1] == get_train_config("tiny", small_overrides()).model


def test_load_params_names_the_file_and_the_fault(broken):
    folder, file, words = broken
    with pytest.raises(CheckpointError) as info:
        load_params(folder)
    message = str(info.value)
    assert message.startswith(file) and words in message and "\n" not in message, message


def test_the_trainer_and_the_cli_exit_2_with_one_line(broken, tmp_path, capsys):
    folder, file, words = broken
    with pytest.raises(SystemExit) as exit_:
        train_main(["--workdir", str(tmp_path / "run"), *small_overrides(), f"init_from={folder}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: init_from='{folder}': {file}"), err
    assert words in err and err.count("\n") == 1, err
    code = cli.main(["generate", "--ckpt", str(folder), "--audio", "q.wav"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {file}") and words in err and err.count("\n") == 1, err
    model = tmp_path / "model.json"  # the voice page's model file, naming the checkpoint
    model.write_text(json.dumps({"params": str(folder), "tokenizer": "tokenizer.json", "template": "tiny",
                                 "token2wav": "token2wav.msgpack"}))  # complete: the checkpoint is what fails
    with pytest.raises(SystemExit) as exit_:
        serve.main(["--model", str(model)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: --model: {file}"), err
    assert words in err and err.count("\n") == 1, err
