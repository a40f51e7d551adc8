"""The command line: clear one-line errors, conversion into a loadable checkpoint."""

import json
from pathlib import Path

import pytest
import soundfile as sf

from mdm_jax import cli
from mdm_jax.config.model import get_config
from mdm_jax.convert.hf_files import save_hf_folder
from mdm_jax.convert.hf_llm import llm_config_to_hf
from mdm_jax.convert.params_io import load_params
from mdm_jax.convert.vocalnet_release import vocalnet_to_release
from mdm_jax.model.vocalnet import random_params

TINY_RELEASE = ["llm.num_layers=1", "encoder.num_layers=1", "speech_decoder.num_layers=1"]


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


@pytest.mark.parametrize("mtp_modules, method", [(0, "ar"), (2, "mtp")])
def test_a_converted_release_refuses_block_diffusion(tmp_path, capsys, mtp_modules, method):
    """`convert vocalnet` records the release in the checkpoint (through save and load) and makes its own
    method the default; `generate ... sampler.method=mdm` on it is refused in words."""
    sizes = [*TINY_RELEASE, f"speech_decoder.mtp_modules={mtp_modules}"]
    cfg = get_config("tiny-vocalnet", sizes)
    release = save_hf_folder(tmp_path / "VocalNet-tiny", llm_config_to_hf(cfg.llm),
                             vocalnet_to_release(random_params(cfg), cfg))
    ckpt = tmp_path / "converted"
    assert cli.main(["convert", "vocalnet", "--src", str(release), "--out", str(ckpt), "--config", "tiny-vocalnet",
                     *sizes]) == 0
    saved = load_params(ckpt)[1]
    assert (saved.speech_decoder.converted_from, saved.sampler.method) == ("VocalNet-tiny", method)
    wav = tmp_path / "q.wav"
    sf.write(wav, [0.0] * 16_000, 16_000)
    capsys.readouterr()
    assert cli.main(["generate", "--ckpt", str(ckpt), "--audio", str(wav), "--out", str(tmp_path / "a.json"),
                     "sampler.method=mdm"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {ckpt}: sampler.method=mdm but its Talker was converted from the VocalNet release "
                   f"VocalNet-tiny, trained autoregressively (AR + MTP), not to denoise blocks: use "
                   f"sampler.method={method}\n"), err


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
