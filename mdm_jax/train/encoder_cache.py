"""Stage I with the frozen Whisper encoder run once per record instead of once per step.

The encoder never trains, yet on the `tiny` preset it is most of a stage I step. `EncoderCache`
replaces a model batch's `mel` by `encoded`, the encoder's frames of each row: computed the first
time that row's mel is seen (one row at a time, its frames rounded up to `pad_multiple`, so the
frames do not depend on which rows share its batch) and kept in host memory, keyed by the mel's
bytes. Memory: records x frames / 2 x d_enc float32 (the embedded corpus: ~200 MB), so it is opt-in
(`data.cache_encoder=true`) and meant for corpora that fit in RAM.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import numpy as np

from data_pipelines.tokenizer import num_speech_frames
from mdm_jax.config.model import ModelConfig
from mdm_jax.model.vocalnet import VocalNet


@functools.partial(jax.jit, static_argnames="cfg")
def _encode(encoder_params, mel, *, cfg: ModelConfig):
    """mel (1, n_mels, frames) -> (1, frames // 2, d_enc)."""
    return VocalNet(cfg).apply({"params": {"encoder": encoder_params}}, mel, method=VocalNet.encode)


class EncoderCache:
    def __init__(self, encoder_params, cfg: ModelConfig, pad_multiple: int):
        self.params, self.cfg, self.pad_multiple = encoder_params, cfg, pad_multiple
        self.frames: dict[bytes, np.ndarray] = {}
        self.computed = 0  # rows encoded so far (the rest were served from the cache)

    def __call__(self, batch: dict, mel_frames: np.ndarray) -> dict:
        """Model batch with mel (b, n_mels, T) and each row's frames (b,) -> the batch with `encoded`
        (b, T' , d_enc) instead (rows zero-padded to the longest)."""
        rows = [self.frames_of(mel[:, : min(self._rounded(n), mel.shape[-1])]) for mel, n in zip(batch["mel"],
                                                                                                mel_frames)]
        encoded = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[-1]), np.float32)
        for i, r in enumerate(rows):
            encoded[i, : len(r)] = r
        return {k: v for k, v in batch.items() if k != "mel"} | {"encoded": encoded}

    def packed(self, batch: dict) -> dict:
        """Packed model batch (`model_batch(packed=True)`: mel (b, n_mels, T) with `mel_segments`) -> the
        batch with `encoded` (b, L · k, d_enc) instead: each dialogue's frames encoded alone (as in an
        unpacked row), the k frames of each of its speech placeholders, in the order of the text's."""
        k = self.cfg.adaptor.downsample
        width = batch["text"].shape[1] * k  # room for every text slot being a placeholder: one shape
        encoded = np.zeros((len(batch["mel"]), width, self.cfg.encoder.d_model), np.float32)
        for row, (mel, segments) in enumerate(zip(batch["mel"], batch["mel_segments"])):
            start = 0
            for segment in range(1, segments.max(initial=0) + 1):
                own = mel[:, segments == segment]
                alone = np.zeros((mel.shape[0], self._rounded(own.shape[1])), np.float32)
                alone[:, : own.shape[1]] = own  # zero-padded as a bucketed row would be
                frames = self.frames_of(alone)[: num_speech_frames(own.shape[1], k) * k]
                encoded[row, start : start + len(frames)] = frames
                start += len(frames)
        return {key: v for key, v in batch.items() if key not in ("mel", "mel_segments")} | {"encoded": encoded}

    def _rounded(self, frames: int) -> int:
        return -(-max(int(frames), 1) // self.pad_multiple) * self.pad_multiple

    def frames_of(self, mel: np.ndarray) -> np.ndarray:
        """One row's mel (n_mels, frames) -> its encoder frames, computed once per distinct mel."""
        key = hashlib.blake2b(np.ascontiguousarray(mel).tobytes(), digest_size=16).digest()
        if key not in self.frames:
            self.frames[key] = np.asarray(_encode(self.params, mel[None], cfg=self.cfg))[0]
            self.computed += 1
        return self.frames[key]
