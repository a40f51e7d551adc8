"""Synthetic batches in the Grain pipeline's format (`train.grain_source` reads a manifest), and the
turning of either into the model batch of `objectives` on the host.

Both sources are iterators over this process's rows with `get_state()` / `set_state()`, so the
checkpoint holds the input position and a resumed run reads exactly the batches it would have.
Nothing here imports Grain: benchmarks and GPU scripts run where only JAX is installed.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.placeholders import SPEECH_PLACEHOLDER
from mdm_jax.config.model import ModelConfig
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import TrainConfig

SYNTHETIC_SPEECH_ID = 5  # "<speech>" in data_pipelines.tokenizer.TINY_SPECIAL_TOKENS
SYNTHETIC_PROMPT = (1, 3)  # <bos> <user>, then the speech slots, then <assistant> (4); answer ends with <eos> (2)


class SyntheticSource:
    """Random dialogues in the Grain pipeline's batch format, a pure function of (seed, batch index, row).

    The answer is a run of consecutive token ids and its units follow from the answer (3 per token),
    so both stages have something to learn. Rows have random lengths, so padding is realistic.
    """

    def __init__(self, cfg: TrainConfig, process_index: int = 0, process_count: int = 1):
        self.model, self.data = cfg.model, cfg.data
        self.rows = local_rows(cfg.data.batch_size, process_index, process_count)
        self.index = 0
        self.frames = int(self.data.max_seconds * 100)
        self.speech_slots = (self.frames + 1) // 2 // self.model.adaptor.downsample
        if len(SYNTHETIC_PROMPT) + self.speech_slots + 3 > self.data.max_text:
            raise ConfigError(f"data.max_text={self.data.max_text} cannot hold {self.speech_slots} speech slots "
                              f"of data.max_seconds={self.data.max_seconds}")

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = [self._row(np.random.default_rng([self.data.seed, self.index, r])) for r in self.rows]
        self.index += 1
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict):
        self.index = int(state["index"])

    def _row(self, rng) -> dict:
        d, m = self.data, self.model
        prompt = [*SYNTHETIC_PROMPT, *[SYNTHETIC_SPEECH_ID] * self.speech_slots, 4]
        room = min(d.max_text - len(prompt) - 1, (d.max_units - 1) // 3)
        n = int(rng.integers(max(1, room // 2), room + 1))
        answer = (int(rng.integers(6, m.llm.vocab_size)) + np.arange(n) - 6) % (m.llm.vocab_size - 6) + 6
        text = np.array([*prompt, *answer, 2], np.int32)
        units = ((answer[:, None] * 3 + np.arange(3)) % m.speech_decoder.num_units).reshape(-1).astype(np.int32)
        frames = int(rng.integers(self.frames // 2, self.frames + 1))
        mel = rng.standard_normal((m.encoder.num_mel_bins, self.frames)).astype(np.float32)
        mel[:, frames:] = 0.0
        return {
            "mel": mel,
            "mel_segment_ids": (np.arange(self.frames) < frames).astype(np.int32),
            "mel_positions": np.where(np.arange(self.frames) < frames, np.arange(self.frames), 0).astype(np.int32),
            "text_positions": _pad(np.arange(len(text), dtype=np.int32), d.max_text),
            "text": _pad(text, d.max_text),
            "text_loss_mask": _pad(np.r_[np.zeros(len(prompt)), np.ones(n + 1)].astype(np.int32), d.max_text),
            "text_segment_ids": _pad(np.ones(len(text), np.int32), d.max_text),
            "units": _pad(units, d.max_units),
            "units_segment_ids": _pad(np.ones(len(units), np.int32), d.max_units),
        }


def model_batch(raw: dict, cfg: ModelConfig, speech_id: int, packed: bool = False) -> dict:
    """Pipeline batch -> the model batch of `objectives` (numpy).

    The tokenizer's speech placeholder becomes SPEECH_PLACEHOLDER; EOS is appended to the units,
    which are padded with PAD to whole blocks. `packed` (several dialogues per row, stage I): the text
    with its segments and per-dialogue index (`text_segments`, `text_index`) and the mel's
    (`mel_segments`, for `EncoderCache.packed`); no units (stage II packs cached LLM states instead).
    """
    text = np.where(raw["text"] == speech_id, SPEECH_PLACEHOLDER, raw["text"]).astype(np.int32)
    if packed:
        return {"mel": raw["mel"].astype(np.float32), "mel_segments": raw["mel_segment_ids"], "text": text,
                "text_valid": raw["text_segment_ids"] > 0, "text_loss_mask": raw["text_loss_mask"] > 0,
                "text_segments": raw["text_segment_ids"], "text_index": raw["text_positions"]}
    if raw["text_segment_ids"].max() > 1:
        raise ValueError("packed rows (several examples per row) in a bucketed run: set data.batching=pack")
    sd = cfg.speech_decoder
    n_units = (raw["units_segment_ids"] > 0).sum(1)
    b, u = raw["units"].shape
    length = -(-(u + 1) // sd.block_size) * sd.block_size
    units = np.full((b, length), sd.pad_id, np.int32)
    units[:, :u] = np.where(raw["units_segment_ids"] > 0, raw["units"], sd.pad_id)
    units[np.arange(b), n_units] = sd.eos_id
    return {
        "mel": raw["mel"].astype(np.float32),
        "text": text,
        "text_valid": raw["text_segment_ids"] > 0,
        "text_loss_mask": raw["text_loss_mask"] > 0,
        "units": units,
        "speech_valid": np.arange(length)[None] <= n_units[:, None],
    }


def batch_stats(batch: dict) -> dict:
    """Real tokens (text + speech) in a model batch and the padded fraction of its token slots."""
    speech = batch.get("speech_valid", np.zeros(0, bool))  # packed stage I rows carry no speech
    real = int(batch["text_valid"].sum() + speech.sum())
    slots = batch["text_valid"].size + speech.size
    return {"tokens": real, "padding": 1.0 - real / slots}


def local_rows(batch_size: int, process_index: int, process_count: int) -> range:
    """The rows of each global batch this process feeds (its contiguous share)."""
    if batch_size % process_count:
        raise ConfigError(f"data.batch_size={batch_size} is not divisible by {process_count} processes")
    per = batch_size // process_count
    return range(process_index * per, (process_index + 1) * per)


def _pad(x, length: int):
    return np.pad(x, (0, length - len(x)))
