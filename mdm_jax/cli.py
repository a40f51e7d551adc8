"""Command line: `python -m mdm_jax.cli {info,convert,export-hf,generate} ...` (see --help of each).

`generate` decodes speech with the checkpoint's own `sampler` config; `key=value` overrides change
it (`sampler.denoise_steps=1`, `sampler.threshold=0.9`, `dtype=bfloat16`, ...), never what the params are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from data_pipelines.audio import load_audio
from data_pipelines.tokenizer import load_tokenizer
from mdm_jax.config.model import ModelConfig, get_config
from mdm_jax.config.overrides import apply_overrides, config_keys
from mdm_jax.convert import llm_config_from_hf, llm_config_to_hf, llm_from_hf, llm_to_hf
from mdm_jax.convert.campplus import convert_campplus
from mdm_jax.convert.cosyvoice2 import convert_cosyvoice2
from mdm_jax.convert.hf_files import load_hf_folder, save_hf_folder
from mdm_jax.convert.params_io import load_params, save_params
from mdm_jax.convert.s3_tokenizer import convert_s3_tokenizer
from mdm_jax.convert.vocalnet_release import release_config, vocalnet_config_from_release, vocalnet_from_release
from mdm_jax.decode.inference import MAX_SECONDS, load_model, spoken_question
from mdm_jax.decode.streaming import stream_batch
from mdm_jax.model.vocalnet import count_params
from mdm_jax.vocoder.campplus import SpeakerEncoder
from mdm_jax.vocoder.load import load_token2wav


def _info(args):
    cfg = get_config(args.config, args.overrides)
    print(cfg.to_json())
    for name, n in count_params(cfg).items():
        print(f"{name:>16}: {n:,}")


def _convert(args):
    if args.kind == "cosyvoice2":
        t2w = convert_cosyvoice2(args.src, args.out, args.overrides, args.speaker)
        print(f"wrote {args.out} (CosyVoice2 token2wav: flow + HiFT, {t2w.sample_rate} Hz)")
        return
    if args.kind == "campplus":
        convert_campplus(args.src, args.out)
        print(f"wrote {args.out} (CAM++ speaker encoder: 192-dim x-vectors for generate --prompt-wav)")
        return
    if args.kind == "s3tokenizer":
        preset = args.config or "v2"
        tok = convert_s3_tokenizer(args.src, args.out, preset, args.overrides)
        print(f"wrote {args.out} (S3 tokenizer {preset}: {tok.config.num_layers} layers, "
              f"{tok.config.codebook_size} codes at 25 Hz)")
        return
    hf_config, state = load_hf_folder(args.src)
    if args.kind == "hf-llm":
        cfg = llm_config_from_hf(hf_config)
        params = llm_from_hf(state, cfg)
    else:  # a preset named by --config wins over the release's own config.json
        cfg = (get_config(args.config, args.overrides) if args.config else apply_overrides(
            vocalnet_config_from_release(hf_config, state, str(Path(args.src) / "config.json")), args.overrides))
        cfg = release_config(cfg, Path(args.src).absolute().name)
        params = vocalnet_from_release(state, cfg)
    out = save_params(args.out, params, cfg)
    print(f"wrote {out} ({type(cfg).__name__}, {len(state)} tensors)")


def _export_hf(args):
    params, cfg = load_params(args.ckpt)
    if isinstance(cfg, ModelConfig):  # a whole VocalNet: its text LLM
        params, cfg = params["llm"], cfg.llm
    out = save_hf_folder(args.out, llm_config_to_hf(cfg), llm_to_hf(params, cfg))
    print(f"wrote {out} (Hugging Face {cfg.family}: config.json + model.safetensors)")


def _generate(args):
    params, cfg = load_model(args.ckpt, args.overrides)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    mels, prompts, eos = [], [], set()
    for path in args.audio:
        mel, prompt, end = spoken_question(load_audio(path, path, max_seconds=MAX_SECONDS)[0], cfg, tok, args.template)
        mels.append(mel)
        prompts.append(prompt)
        eos |= end
    t2w = load_token2wav(args.token2wav) if args.token2wav else None
    if args.prompt_wav:
        t2w = _with_voice(t2w, args.prompt_wav, args.campplus)
    run = lambda: stream_batch(params, cfg, mels, prompts, eos_ids=eos,
                               max_text_tokens=args.max_text_tokens, max_blocks=args.max_blocks, token2wav=t2w)
    if args.warmup:  # compile every shape first, so the times below are latencies, not compilation
        list(run())
    several = len(args.audio) > 1
    wav_paths = [f"{Path(args.wav).with_suffix('')}_{i}.wav" if several else args.wav for i in range(len(mels))]
    wavs = [sf.SoundFile(p, "w", t2w.sample_rate, 1, "PCM_16") for p in wav_paths] if t2w is not None else []
    chunks: list[list] = [[] for _ in mels]
    for block in run():
        for chunk in block:
            chunks[chunk.row].append(chunk)
            line = (f"{f'question {chunk.row} ' if several else ''}block {chunk.block} at {chunk.elapsed_s:.3f}s: "
                    f"{len(chunk.speech)} units, {len(chunk.text_ids)} text tokens")
            if wavs:  # the file grows as the answer streams
                wavs[chunk.row].write(np.asarray(chunk.audio, np.float32))
                wavs[chunk.row].flush()
                line += f", audio +{len(chunk.audio) / t2w.sample_rate:.2f}s"
            print(line + " (" + ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in chunk.times.items() if v) + ")",
                  flush=True)
    for w in wavs:
        w.close()
    results = [_answer(c, tok, cfg, t2w, path if t2w is not None else None) for c, path in zip(chunks, wav_paths)]
    with open(args.out, "w") as f:
        json.dump({"answers": results} if several else results[0], f)
    for r in results:
        print(f"{len(r['speech_units'])} speech units, first chunk after {r['first_chunk_s']:.3f}s"
              + (f"; {r['wav']}: {r['audio_s']:.2f}s of audio" if t2w is not None else ""))
    print(f"wrote {args.out}")


def _with_voice(t2w, prompt_wav: str, campplus: str | None):
    """The token2wav speaking in the voice of `prompt_wav` (CAM++'s x-vector as CosyVoice2's speaker)."""
    if campplus is None or not hasattr(t2w, "with_voice"):
        raise ValueError(f"--prompt-wav {prompt_wav}: needs --campplus (convert campplus) and a CosyVoice2 --token2wav "
                         "(convert cosyvoice2), whose flow takes a speaker x-vector")
    return t2w.with_voice(SpeakerEncoder.load(campplus).embed(load_audio(prompt_wav, prompt_wav,
                                                                         max_seconds=MAX_SECONDS)[0]))


def _answer(chunks, tok, cfg: ModelConfig, t2w, wav: str | None) -> dict:
    """One question's streamed chunks -> its answer.json entry."""
    text_ids = chunks[-1].text_ids
    out = {"text_ids": text_ids, "text": tok.decode(text_ids) if tok else None,
           "speech_units": np.concatenate([c.speech for c in chunks]).tolist(),
           "first_chunk_s": chunks[0].elapsed_s, "total_s": chunks[-1].elapsed_s, "blocks": len(chunks),
           "times": [c.times for c in chunks], "sampler": json.loads(cfg.to_json())["sampler"]}
    if wav is not None:
        out.update(wav=wav, audio_s=sum(len(c.audio) for c in chunks) / t2w.sample_rate,
                   first_audio_s=next((c.elapsed_s for c in chunks if len(c.audio)), None))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print a preset (with overrides) and its parameter counts",
                          epilog="config keys: " + ", ".join(config_keys(get_config("tiny"))))
    info.add_argument("--config", default="tiny")
    info.add_argument("overrides", nargs="*", metavar="key=value")
    info.set_defaults(run=_info)

    conv = sub.add_parser("convert", help="convert a Hugging Face / VocalNet / CosyVoice2 folder for mdm_jax")
    conv.add_argument("kind", choices=["hf-llm", "vocalnet", "cosyvoice2", "campplus", "s3tokenizer"],
                      help="hf-llm: LLaMA 3.x / Qwen2 text model; vocalnet: a whole VocalNet release; "
                           "cosyvoice2: CosyVoice2's flow.pt + hift.pt as a token2wav (--token2wav of generate); "
                           "campplus: CosyVoice2's CAM++ speaker encoder (campplus.onnx, or a CAM++ state dict .pt) "
                           "for generate --prompt-wav; "
                           "s3tokenizer: CosyVoice2's speech_tokenizer_v2.onnx (or a v2 / v3 state dict .pt) for "
                           "mdm_jax.tokenize_speech")
    conv.add_argument("--src", required=True, help="folder with config.json and *.safetensors (cosyvoice2: flow.pt "
                                                   "and hift.pt, or .safetensors; s3tokenizer: the .onnx / .pt file)")
    conv.add_argument("--out", required=True)
    conv.add_argument("--config", help="vocalnet: a preset to use instead of the sizes the release's config.json "
                                       "and tensors give; s3tokenizer: v2 (default) or v3")
    conv.add_argument("--speaker", help="cosyvoice2: a .npy speaker x-vector (192,) for the voice (default zeros)")
    conv.add_argument("overrides", nargs="*", metavar="key=value",
                      help="config overrides; cosyvoice2: flow.KEY=VALUE / hift.KEY=VALUE sizes; s3tokenizer: "
                           "KEY=VALUE sizes (d_model=128)")
    conv.set_defaults(run=_convert)

    exp = sub.add_parser("export-hf", help="write the LLM of a checkpoint as a Hugging Face folder (safetensors)")
    exp.add_argument("--ckpt", required=True, help="params checkpoint (a converted LLM or a whole VocalNet)")
    exp.add_argument("--out", required=True)
    exp.set_defaults(run=_export_hf)

    gen = sub.add_parser("generate", help="stream an answer (text + speech units) to a spoken question")
    gen.add_argument("--ckpt", required=True, help="params checkpoint folder, or random:PRESET for a smoke run")
    gen.add_argument("--audio", required=True, nargs="+",
                     help="the question(s), any format libsndfile reads; several are answered as one batch")
    gen.add_argument("--tokenizer", help="tokenizer.json; without it the prompt is the speech alone")
    gen.add_argument("--template", default="tiny", help="prompt template (data_pipelines.tokenizer.TEMPLATES)")
    gen.add_argument("--max-text-tokens", type=int, default=64)
    gen.add_argument("--max-blocks", type=int, default=16)
    gen.add_argument("--out", default="answer.json")
    gen.add_argument("--token2wav", help="speak the units: a converted CosyVoice2 folder (convert cosyvoice2) or "
                                         "the demo's token2wav.msgpack")
    gen.add_argument("--wav", default="answer.wav", help="with --token2wav: the audio, written as it streams "
                                                          "(several questions: answer_0.wav, answer_1.wav, ...)")
    gen.add_argument("--prompt-wav", help="speak in the voice of this recording (a few seconds of speech): CAM++'s "
                                          "x-vector becomes the speaker of a CosyVoice2 --token2wav; needs --campplus")
    gen.add_argument("--campplus", help="a converted CAM++ folder (convert campplus) for --prompt-wav")
    gen.add_argument("--warmup", action="store_true", help="run once before timing (times exclude compilation)")
    gen.add_argument("overrides", nargs="*", metavar="key=value",
                     help="how the model runs: sampler.denoise_steps=1, sampler.threshold=0.9, dtype=bfloat16, ...")
    gen.set_defaults(run=_generate)

    args, extra = parser.parse_known_args(argv)
    # argparse fills a '*' positional right after an earlier one (convert KIND ...): later key=value go here
    if extra and (not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as e:  # config / conversion errors: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
