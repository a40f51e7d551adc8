"""Training batches from the Grain pipeline over a manifest (`data.manifest`), this process's rows."""

from __future__ import annotations

import os

from data_pipelines.manifest import read_manifest
from data_pipelines.pipeline import DataConfig, make_dataset
from data_pipelines.tokenizer import TEMPLATES, load_tokenizer, speech_token_id
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import TrainConfig
from mdm_jax.train.data import local_rows


def grain_source(cfg: TrainConfig, bad, process_index: int = 0, process_count: int = 1, epochs: int | None = None):
    """(iterator over this process's Grain batches, speech placeholder id of the tokenizer);
    `epochs=None` repeats forever."""
    d, m = cfg.data, cfg.model
    if not os.path.isfile(d.manifest):
        raise ConfigError(f"data.manifest={d.manifest!r}: no such file")
    if d.root and not os.path.isdir(d.root):
        raise ConfigError(f"data.root={d.root!r}: no such folder")
    tokenizer_path = d.tokenizer or os.path.join(os.path.dirname(d.manifest), "tokenizer.json")
    if not os.path.exists(tokenizer_path):
        raise ConfigError(f"tokenizer {tokenizer_path!r} not found: set data.tokenizer")
    if d.template not in TEMPLATES:
        raise ConfigError(f"data.template={d.template!r}; expected one of {sorted(TEMPLATES)}")
    tokenizer, template = load_tokenizer(tokenizer_path), TEMPLATES[d.template]
    if tokenizer.get_vocab_size() > m.llm.vocab_size:
        raise ConfigError(f"tokenizer has {tokenizer.get_vocab_size()} ids > model.llm.vocab_size={m.llm.vocab_size}")
    rows = len(local_rows(d.batch_size, process_index, process_count))
    packing = dict(pack_mel=int(100 * (d.pack_seconds or d.max_seconds)), pack_text=d.pack_text or d.max_text,
                   pack_units=d.pack_units or d.max_units)
    if d.batching == "pack":  # Grain packs every feature: mel frames start at adaptor-group boundaries
        packing["pack_mel"] = -(-packing["pack_mel"] // (2 * m.adaptor.downsample)) * 2 * m.adaptor.downsample
    data_cfg = DataConfig(
        batch_size=rows, batching=d.batching, **packing,
        n_mels=m.encoder.num_mel_bins, adaptor_k=m.adaptor.downsample, unit_vocab=m.speech_decoder.num_units,
        max_seconds=d.max_seconds, max_text=d.max_text, max_units=d.max_units, pad_multiple=d.pad_multiple,
        seed=d.seed, num_epochs=epochs,
    )
    records = read_manifest(d.manifest, bad, root=d.root or None, allow_outside_root=d.allow_outside_root)
    ds = make_dataset(records, tokenizer, template, data_cfg, bad,
                      process_index=process_index, process_count=process_count)
    return iter(ds), speech_token_id(tokenizer, template)
