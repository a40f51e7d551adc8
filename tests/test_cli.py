"""The command line: clear one-line errors, conversion into a loadable checkpoint."""

import pytest

from mdm_jax import cli


def test_unknown_key_is_one_clear_line(capsys):
    assert cli.main(["info", "--config", "tiny", "llm.layers=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'llm.layers'") and err.count("\n") == 1


def test_wrong_type_is_one_clear_line(capsys):
    assert cli.main(["info", "--config", "tiny", "llm.num_layers=2.5"]) == 2
    assert "expects int, got '2.5'" in capsys.readouterr().err


def test_convert_from_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert cli.main(["convert", "hf-llm", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit):
        cli.main(["info", "--help"])
    assert "speech_decoder.block_size" in capsys.readouterr().out
