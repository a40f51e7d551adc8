"""The Grain input pipeline: records -> shuffled, sharded, decoded, featurised, tokenised batches.

    bad = BadRecords(strict=False)
    records = read_manifest("data/embedded/train.jsonl", bad)
    ds = make_dataset(records, load_tokenizer("tokenizer.json"), TEMPLATES["tiny"], DataConfig(), bad,
                      process_index=jax.process_index(), process_count=jax.process_count())
    it = iter(ds)
    batch = next(it)
    state = it.get_state()  # goes into the Orbax checkpoint; `it.set_state(state)` resumes exactly
    bad.write(run_dir / "skipped.jsonl")

Each batch is a dict of numpy arrays (B = batch_size; T, L, U fixed by `pack_*` when packing,
the batch's longest example rounded up to `pad_multiple` when bucketing):

    mel                  (B, n_mels, T) float32   Whisper log-mel, 100 Hz
    mel_segment_ids      (B, T) int32             1, 2, ... per example in the row, 0 on padding
    mel_positions        (B, T) int32             frame index within its example
    text                 (B, L) int32             prompt (speech placeholder repeated once per
                                                  adaptor frame of that example), answer, end token
    text_loss_mask       (B, L) int32             1 on answer and end tokens
    text_segment_ids     (B, L) int32
    text_positions       (B, L) int32
    units                (B, U) int32             speech units of the answer, in [0, unit_vocab)
    units_segment_ids    (B, U) int32
    units_positions      (B, U) int32

Segment k of `text` row b, `mel` row b and `units` row b are the same dialogue. When packing, each
example's mel starts at a multiple of 2 * adaptor_k frames, so its adaptor frames (stride-2 conv,
then groups of k) never mix two examples.

Bad records are reported to `bad` from the read threads (threads share it; do not use
multiprocess prefetch with it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import grain
import numpy as np
from tokenizers import Tokenizer

from data_pipelines.audio import load_audio
from data_pipelines.batching import BucketIterDataset, pack
from data_pipelines.features import log_mel
from data_pipelines.manifest import Record, load_units
from data_pipelines.tokenizer import PromptTemplate, encode_dialogue, num_speech_frames
from data_pipelines.validation import BadRecordError, BadRecords, Reason


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline settings. Lengths: mel frames (100 Hz), text tokens, speech units (25 Hz)."""

    batch_size: int = 8
    batching: str = "pack"  # "pack" (several examples per row) | "bucket" (one per row, sorted by length)
    n_mels: int = 80
    pad_to_30s: bool = False  # Whisper's native 3000-frame input (one example per packed row)
    adaptor_k: int = 5
    unit_vocab: int = 6561
    max_seconds: float = 30.0
    max_text: int = 1024
    max_units: int = 1024
    resample: bool = True  # resample other rates to 16 kHz, else skip such records
    allow_stereo: bool = True  # average channels, else skip such records
    seed: int = 0
    num_epochs: int | None = 1  # None repeats forever
    read_threads: int = 4
    prefetch: int = 64  # decoded examples buffered ahead of batching
    bucket_window: int = 32  # batches sorted together when bucketing
    pad_multiple: int = 8  # bucketed lengths round up to this, to bound the number of shapes
    pack_mel: int = 3000  # row lengths when packing
    pack_text: int = 1024
    pack_units: int = 1024

    def __post_init__(self):
        if self.pad_to_30s and self.max_seconds > 30:
            raise ValueError(f"pad_to_30s truncates audio: max_seconds={self.max_seconds} must be <= 30")
        if self.batching == "pack":
            frames = 3000 if self.pad_to_30s else int(self.max_seconds * 100)
            for name, longest, row in (
                ("mel", frames, self.pack_mel),
                ("text", self.max_text, self.pack_text),
                ("units", self.max_units, self.pack_units),
            ):
                if longest > row:
                    raise ValueError(f"pack_{name}={row} cannot hold the longest allowed example ({longest})")


def decode(
    record: Record, tokenizer: Tokenizer, template: PromptTemplate, cfg: DataConfig, bad: BadRecords
) -> dict | None:
    """One record -> {'mel' (T, n_mels), 'text' (L,), 'text_loss_mask' (L,), 'units' (U,)}.

    Returns None (Grain skips it) for a bad record after reporting it to `bad`.
    """
    try:
        audio, notes = load_audio(
            record.user_audio,
            record.id,
            max_seconds=cfg.max_seconds,
            resample=cfg.resample,
            allow_stereo=cfg.allow_stereo,
        )
        mel = log_mel(audio, cfg.n_mels, cfg.pad_to_30s).T  # time first, so batching pads/packs axis 0
        num_speech = num_speech_frames(len(mel), cfg.adaptor_k)
        text, loss_mask = encode_dialogue(tokenizer, template, num_speech, record.assistant_text)
        units = load_units(record, cfg.unit_vocab)
        for name, length, limit in (("text", len(text), cfg.max_text), ("units", len(units), cfg.max_units)):
            if length > limit:
                raise BadRecordError(record.id, Reason.TOO_LONG, f"{length} {name} tokens > {limit}")
    except BadRecordError as e:
        bad.skip(e)
        return None
    bad.note(record.id, notes)
    return {"mel": mel, "text": text, "text_loss_mask": loss_mask, "units": units}


def _mel_channels_first(batch: dict) -> dict:
    return batch | {"mel": np.ascontiguousarray(batch["mel"].transpose(0, 2, 1))}


def make_dataset(
    records: Sequence[Record],
    tokenizer: Tokenizer,
    template: PromptTemplate,
    cfg: DataConfig,
    bad: BadRecords,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Batches for this process: every process shuffles alike (same seed), then takes its own slice."""
    ds = grain.MapDataset.source(records).shuffle(seed=cfg.seed).repeat(cfg.num_epochs)
    ds = ds[process_index::process_count]
    ds = ds.map(functools.partial(decode, tokenizer=tokenizer, template=template, cfg=cfg, bad=bad))
    examples = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch))
    meta = ("text_loss_mask",)
    if cfg.batching == "bucket":
        batches = BucketIterDataset(
            examples,
            batch_size=cfg.batch_size,
            sort_key="text",
            window=cfg.bucket_window,
            pad_multiple=cfg.pad_multiple,
            meta=meta,
            seed=cfg.seed,
        )
    elif cfg.batching == "pack":
        batches = pack(
            examples,
            batch_size=cfg.batch_size,
            lengths={
                "mel": cfg.pack_mel,
                "text": cfg.pack_text,
                "text_loss_mask": cfg.pack_text,
                "units": cfg.pack_units,
            },
            meta=meta,
            alignment={"mel": 2 * cfg.adaptor_k},
            seed=cfg.seed,
        )
    else:
        raise ValueError(f"DataConfig.batching must be 'pack' or 'bucket', got {cfg.batching!r}")
    return batches.map(_mel_channels_first)
