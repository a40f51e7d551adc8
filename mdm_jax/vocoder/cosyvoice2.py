"""CosyVoice2's token2wav with converted weights (the flow, then HiFT): speech units -> 24 kHz audio,
offline or streamed block by block with the state CosyVoice2 carries between chunks.

    t2w = CosyVoice2Token2Wav.load("cosyvoice2_jax")     # written by `python -m mdm_jax.cli convert cosyvoice2`
    wav = t2w(units)                                     # (U,) -> (960·U,) float32 at 24 kHz
    stream = t2w.stream(hop_tokens=16)
    for block in blocks:
        play(stream.push(block))                         # the audio that is final so far (maybe empty)
    play(stream.push(np.zeros(0, np.int32), final=True))

Offline is CosyVoice2's non-streaming inference (full attention). Streaming is its `token2wav` loop:
every `hop_tokens` new units (plus the flow's `pre_lookahead` units of look-ahead) re-run the flow in
chunk-causal mode on all units so far, vocode the new mel frames behind the previous chunk's last
`mel_overlap` frames with the previous excitation tail pinned, cross-fade the overlap with a Hamming
window and hold back the last `mel_overlap` frames' samples until the next chunk; the last chunk
reads every unit with full attention. At hops of `chunk_tokens` (25, CosyVoice2's own) the mel of every
emitted chunk equals the offline chunk-causal mel and the audio equals CosyVoice2's own streaming loop
(tested); other hops (the Talker's 16-unit blocks) re-read a partly filled chunk, as VocalNet's
15-unit streaming does.

The flow's input is padded to a power of two (padding never reaches valid frames), so an utterance
compiles a few programs; HiFT runs at the exact frame count (its convolutions read the sequence
edges): with a fixed hop that is three lengths (first, middle, last chunk).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.buckets import bucket
from mdm_jax.model.weights_folder import load_folder, save_folder
from mdm_jax.vocoder.base import check_units
from mdm_jax.vocoder.cosyvoice_flow import CosyFlowConfig, token2mel
from mdm_jax.vocoder.hift import HiFTConfig, hift_waveform

NOISE_FRAMES = 50 * 300  # CosyVoice2's noise table: 300 s of 50 Hz frames
CONFIG_FILE = "token2wav.json"


@dataclass(frozen=True, eq=False)
class CosyVoice2Token2Wav:
    flow_params: dict
    flow_config: CosyFlowConfig
    hift_params: dict
    hift_config: HiFTConfig
    speaker: np.ndarray  # (spk_embed_dim,) x-vector of the voice; zeros = the flow's default voice
    prompt_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (P,) a voice prompt's units
    prompt_mel: np.ndarray = field(default_factory=lambda: np.zeros((0, 80), np.float32))  # (2P, n_mels) its mel
    seed: int = 0
    mel_overlap: int = 8  # CosyVoice2's mel_cache_len

    @property
    def sample_rate(self) -> int:
        return self.hift_config.sampling_rate

    @property
    def samples_per_unit(self) -> int:
        return self.flow_config.token_mel_ratio * self.hift_config.samples_per_frame

    @functools.cached_property
    def noise(self) -> jax.Array:
        """(NOISE_FRAMES, n_mels) the flow's fixed frame-indexed noise."""
        return jax.random.normal(jax.random.key(self.seed), (NOISE_FRAMES, self.flow_config.n_mels))

    def mel(self, units: np.ndarray, *, streaming: bool, finalize: bool = True) -> np.ndarray:
        """(U,) units -> (frames, n_mels) mel of the units after the prompt (without the look-ahead units'
        frames when not `finalize`)."""
        c = self.flow_config
        tokens = np.concatenate([self.prompt_tokens, check_units(units, c.vocab_size)])
        ids = np.zeros((1, bucket(len(tokens), minimum=32)), np.int32)  # a power of two: few programs
        ids[0, : len(tokens)] = tokens
        mel = token2mel(self.flow_params, c, ids, np.array([len(tokens)]), self.speaker[None], self.prompt_mel,
                        self.noise, streaming=streaming, finalize=finalize)
        frames = c.token_mel_ratio * (len(tokens) - (0 if finalize else c.pre_lookahead))
        return np.asarray(mel[0, len(self.prompt_mel): frames])

    def vocode(self, mel: np.ndarray, key, cache_source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(F, n_mels) -> (waveform, excitation), each (480·F,)."""
        wave, source = hift_waveform(self.hift_params, self.hift_config, jnp.asarray(mel)[None], key,
                                     None if cache_source is None else jnp.asarray(cache_source)[None])
        return np.asarray(wave[0]), np.asarray(source[0])

    def __call__(self, units: np.ndarray) -> np.ndarray:
        return self.vocode(self.mel(units, streaming=False), jax.random.key(self.seed))[0]

    def with_voice(self, speaker: np.ndarray) -> CosyVoice2Token2Wav:
        """This token2wav speaking with x-vector `speaker` (spk_embed_dim,), e.g. CAM++'s embedding of a prompt wav
        (`mdm_jax.vocoder.campplus.SpeakerEncoder.embed`)."""
        speaker = np.asarray(speaker, np.float32)
        if speaker.shape != (self.flow_config.spk_embed_dim,) or not np.all(np.isfinite(speaker)):
            raise ValueError(f"speaker embedding of shape {speaker.shape}: expected "
                             f"({self.flow_config.spk_embed_dim},) finite values")
        return dataclasses.replace(self, speaker=speaker)

    def stream(self, hop_tokens: int | None = None) -> Token2WavStream:
        return Token2WavStream(self, hop_tokens or self.flow_config.chunk_tokens)

    def save(self, path: str | Path) -> Path:
        meta = {"flow": dataclasses.asdict(self.flow_config), "hift": dataclasses.asdict(self.hift_config),
                "seed": self.seed, "mel_overlap": self.mel_overlap}
        arrays = {"flow": self.flow_params, "hift": self.hift_params, "speaker": self.speaker,
                  "prompt_tokens": self.prompt_tokens, "prompt_mel": self.prompt_mel}
        return save_folder(path, CONFIG_FILE, meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> CosyVoice2Token2Wav:
        meta, arrays = load_folder(path, CONFIG_FILE, "CosyVoice2 token2wav", "cosyvoice2")
        return cls(arrays["flow"], CosyFlowConfig(**meta["flow"]), arrays["hift"], HiFTConfig(**meta["hift"]),
                   np.asarray(arrays["speaker"]), np.asarray(arrays["prompt_tokens"], np.int32),
                   np.asarray(arrays["prompt_mel"], np.float32), meta["seed"], meta["mel_overlap"])


class Token2WavStream:
    """CosyVoice2's streaming token2wav for one utterance; `push` units as they arrive."""

    def __init__(self, t2w: CosyVoice2Token2Wav, hop_tokens: int):
        c = t2w.flow_config
        self.t2w, self.hop = t2w, hop_tokens
        # the first hop ends on a chunk boundary of prompt + units, as CosyVoice2 pads it
        self.first_hop = hop_tokens + (-len(t2w.prompt_tokens)) % c.chunk_tokens
        self.units: list[int] = []
        self.offset = 0  # units whose audio has been emitted (or is held back in the overlap)
        self.calls = 0
        self.cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # mel, excitation, audio tails
        self.window = np.hamming(2 * t2w.mel_overlap * t2w.hift_config.samples_per_frame).astype(np.float32)
        self.times: list[tuple[float, float]] = []  # (flow s, HiFT s) per chunk synthesised

    def push(self, units: np.ndarray, final: bool = False) -> np.ndarray:
        """Append (n,) units -> the (samples,) float32 audio that became final (possibly empty)."""
        self.units.extend(int(u) for u in np.asarray(units).reshape(-1))
        out = []
        lookahead = self.t2w.flow_config.pre_lookahead
        while len(self.units) - self.offset >= self._hop() + lookahead:
            hop = self._hop()
            out.append(self._chunk(self.units[: self.offset + hop + lookahead], finalize=False))
            self.offset += hop
        if final and self.units:
            out.append(self._chunk(self.units, finalize=True))
            self.offset = len(self.units)
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _hop(self) -> int:
        return self.first_hop if self.offset == 0 else self.hop

    def _chunk(self, units: list[int], finalize: bool) -> np.ndarray:
        t2w = self.t2w
        # the last chunk, once every unit is in, reads them all (CosyVoice2's finalize: non-streaming attention)
        start = time.perf_counter()
        mel = t2w.mel(np.asarray(units, np.int32), streaming=not finalize, finalize=finalize)
        mel = mel[self.offset * t2w.flow_config.token_mel_ratio:]
        flow_s = time.perf_counter() - start
        cache_source = None
        if self.cache is not None:
            mel, cache_source = np.concatenate([self.cache[0], mel]), self.cache[1]
        speech, source = t2w.vocode(mel, jax.random.fold_in(jax.random.key(t2w.seed), self.calls), cache_source)
        self.times.append((flow_s, time.perf_counter() - start - flow_s))
        self.calls += 1
        if self.cache is not None:  # cross-fade the previous chunk's held-back tail into this chunk's start
            n = len(self.window) // 2
            speech = speech.copy()
            speech[:n] = speech[:n] * self.window[:n] + self.cache[2] * self.window[n:]
        if finalize:
            self.cache = None
            return speech
        n = len(self.window) // 2
        self.cache = (mel[-t2w.mel_overlap:], source[-n:], speech[-n:])
        return speech[:-n]
