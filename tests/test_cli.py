"""The command line: clear one-line errors, conversion into a loadable checkpoint."""

import json
from pathlib import Path

import pytest
import soundfile as sf

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


def test_generate_refuses_a_method_the_talker_cannot_run(tmp_path, capsys):
    wav = tmp_path / "q.wav"
    sf.write(wav, [0.0] * 16_000, 16_000)
    assert cli.main(["generate", "--ckpt", "random:tiny", "--audio", str(wav), "--out", str(tmp_path / "a.json"),
                     "speech_decoder.mtp_modules=0", "sampler.method=mtp"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: random:tiny: sampler.method=mtp but the speech decoder has no MTP modules: "
                   "use sampler.method=ar\n"), err


def test_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit):
        cli.main(["info", "--help"])
    assert "speech_decoder.block_size" in capsys.readouterr().out


def test_generate_speaks_the_demo_models_answer_block_by_block(demo_run, tmp_path, capsys):
    """`generate` with the quick demo's model, tokenizer and token2wav on a held-out question: the answer's
    audio grows block by block in the wav."""
    model = json.loads((demo_run / "model.json").read_text())
    question = json.loads(open(model["test_manifest"]).readline())
    wav, answer = tmp_path / "answer.wav", tmp_path / "answer.json"
    assert cli.main(["generate", "--ckpt", model["params"], "--tokenizer", model["tokenizer"], "--template",
                     model["template"], "--audio", str(Path(model["test_manifest"]).parent / question["user_audio"]),
                     "--token2wav", model["token2wav"], "--wav", str(wav), "--out", str(answer),
                     "--max-blocks", "3"]) == 0
    result, (audio, rate) = json.loads(answer.read_text()), sf.read(wav)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("block ")]
    assert len(lines) == result["blocks"] and all("audio +" in line for line in lines)
    assert len(audio) > 0 and len(audio) == pytest.approx(rate * result["audio_s"]) and result["text"] is not None
