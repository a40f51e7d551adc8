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
        rows = []
        for mel, n in zip(batch["mel"], mel_frames):
            n = min(-(-max(int(n), 1) // self.pad_multiple) * self.pad_multiple, mel.shape[-1])
            key = hashlib.blake2b(np.ascontiguousarray(mel[:, :n]).tobytes(), digest_size=16).digest()
            if key not in self.frames:
                self.frames[key] = np.asarray(_encode(self.params, mel[None, :, :n], cfg=self.cfg))[0]
                self.computed += 1
            rows.append(self.frames[key])
        encoded = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[-1]), np.float32)
        for i, r in enumerate(rows):
            encoded[i, : len(r)] = r
        return {k: v for k, v in batch.items() if k != "mel"} | {"encoded": encoded}
