"""Stage II inputs computed once: the frozen encoder + LLM's answer states for every record.

Stage II and distillation train only the speech decoder, yet each step would re-run the frozen
Whisper encoder and LLM over the same audio. `compute` runs them once over the manifest (the
training pipeline's batches, so padding matches stage I); `StatesSource` then serves the speech
objective's model batches directly, at one fixed shape (one compilation).

    python -m mdm_jax.train.llm_states --config tiny --params runs/stage1/params --out states.npz data.manifest=...
    python -m mdm_jax.train --config tiny --workdir runs/stage2 stage.name=speech data.llm_states=states.npz ...
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
from tqdm import tqdm

from data_pipelines.validation import BadRecords
from mdm_jax.config.overrides import ConfigError
from mdm_jax.config.train import TrainConfig, get_train_config
from mdm_jax.convert.params_io import load_params
from mdm_jax.train.data import local_rows, model_batch
from mdm_jax.train.grain_source import grain_source
from mdm_jax.train.objectives import speech_inputs

FIELDS = ("hidden", "text_lengths", "units", "unit_lengths")


def compute(params, cfg: TrainConfig, bad) -> dict[str, np.ndarray]:
    """Every record of `cfg.data.manifest` once -> ragged arrays: hidden (sum T, d) float32 answer
    states (end token included), text_lengths (N,), units (sum U,) int32 (EOS included), unit_lengths (N,)."""
    source, speech_id = grain_source(cfg, bad, epochs=1)
    run = jax.jit(lambda p, b: speech_inputs(p, b, cfg))
    hidden, units, text_lengths, unit_lengths = [], [], [], []
    for raw in tqdm(source, desc="LLM states", unit="batch"):
        batch = model_batch(raw, cfg.model, speech_id)
        rows = np.flatnonzero(batch["text_valid"].any(1))  # the last batch has padding rows
        out = jax.device_get(run(params, dict(batch, streaming=np.zeros(len(batch["text"]), bool))))
        for r in rows:
            t, u = int(out["text_valid"][r].sum()), int(out["speech_valid"][r].sum())
            hidden.append(out["text_hidden"][r, :t].astype(np.float32))
            units.append(out["units"][r, :u])
            text_lengths.append(t)
            unit_lengths.append(u)
    return {"hidden": np.concatenate(hidden), "text_lengths": np.asarray(text_lengths, np.int32),
            "units": np.concatenate(units).astype(np.int32), "unit_lengths": np.asarray(unit_lengths, np.int32)}


def save(path: str, states: dict[str, np.ndarray]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path + ".tmp.npz", **states)
    os.replace(path + ".tmp.npz", path)  # a killed run never leaves half a cache behind
    return path


def load(path: str, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """The cache at `path`, checked against the model config (clear errors naming the file)."""
    if not os.path.isfile(path):
        raise ConfigError(f"data.llm_states={path!r}: no such file (make it with `python -m mdm_jax.train.llm_states`)")
    with np.load(path) as f:
        missing = [k for k in FIELDS if k not in f]
        if missing:
            raise ConfigError(f"data.llm_states={path!r} is not an LLM-states cache: missing {missing}")
        states = {k: f[k] for k in FIELDS}
    d, sd = cfg.model.llm.d_model, cfg.model.speech_decoder
    if states["hidden"].shape[1:] != (d,):
        raise ConfigError(f"data.llm_states={path!r} holds states of width {states['hidden'].shape[1:]}, "
                          f"the model's LLM has d_model={d}")
    if states["text_lengths"].sum() != len(states["hidden"]) or states["unit_lengths"].sum() != len(states["units"]):
        raise ConfigError(f"data.llm_states={path!r}: lengths do not add up to the stored arrays (truncated file?)")
    if states["units"].max(initial=0) > sd.eos_id:
        raise ConfigError(f"data.llm_states={path!r} holds unit ids above EOS={sd.eos_id}: another speech vocabulary")
    return states


def lay_out(hidden: list[np.ndarray], units: list[np.ndarray], rows: list[list[int]], *, text_len: int,
            unit_len: int, block_size: int, pad_id: int, packed: bool) -> dict[str, np.ndarray]:
    """Examples i (answer states hidden[i] (T_i, d), units[i] (U_i,) ending in EOS) -> the speech objective's
    batch, row r holding the examples rows[r] (one each unless `packed`): text_hidden (R, text_len, d),
    text_valid (R, text_len), units, speech_valid (R, unit_len); packed adds `packing.PACKED_KEYS`, each
    answer padded to whole blocks so that no block holds two."""
    d = hidden[0].shape[1]
    batch = {"text_hidden": np.zeros((len(rows), text_len, d), np.float32),
             "text_valid": np.zeros((len(rows), text_len), bool),
             "units": np.full((len(rows), unit_len), pad_id, np.int32),
             "speech_valid": np.zeros((len(rows), unit_len), bool)}
    if packed:
        batch |= {k: np.zeros((len(rows), n), np.int32) for k, n in (
            ("text_segments", text_len), ("text_index", text_len), ("speech_segments", unit_len),
            ("speech_index", unit_len))}
    for row, ids in enumerate(rows):
        t0 = u0 = 0
        for segment, i in enumerate(ids, 1):
            t, u = len(hidden[i]), len(units[i])
            blocks = -(-u // block_size) * block_size
            if t0 + t > text_len or u0 + blocks > unit_len:
                raise ValueError(f"examples {ids} do not fit a row of {text_len} text / {unit_len} speech slots")
            batch["text_hidden"][row, t0 : t0 + t], batch["text_valid"][row, t0 : t0 + t] = hidden[i], True
            batch["units"][row, u0 : u0 + u], batch["speech_valid"][row, u0 : u0 + u] = units[i], True
            if packed:
                batch["text_segments"][row, t0 : t0 + t], batch["text_index"][row, t0 : t0 + t] = segment, np.arange(t)
                batch["speech_segments"][row, u0 : u0 + blocks] = segment
                batch["speech_index"][row, u0 : u0 + blocks] = np.arange(blocks)
            t0, u0 = t0 + t, u0 + blocks
    return batch


def pack_rows(order, text: np.ndarray, speech: np.ndarray, *, text_len: int, unit_len: int,
              bins: int) -> list[list[int]]:
    """Examples (ids in `order`; text and speech slots each) best-fit into rows of text_len / unit_len slots:
    each goes to the open row it leaves the least speech room in; with `bins` rows open and none fitting,
    the fullest is closed. -> the rows' example ids, in the order they were closed."""
    closed, rows, room = [], [], []
    for i in order:
        fits = [r for r in range(len(rows)) if room[r][0] >= text[i] and room[r][1] >= speech[i]]
        if not fits:
            if len(rows) == bins:
                r = min(range(len(rows)), key=lambda r: room[r][1])
                closed.append(rows.pop(r))
                room.pop(r)
            rows.append([])
            room.append([text_len, unit_len])
            fits = [len(rows) - 1]
        r = min(fits, key=lambda r: room[r][1])
        rows[r].append(int(i))
        room[r][0] -= text[i]
        room[r][1] -= speech[i]
    return closed + rows


class StatesSource:
    """Model batches of the speech objective over a states cache; batch i is a pure function of
    (seed, i) (a fresh permutation every epoch), so checkpoints hold just the index.

    Shapes: text_hidden (b, T, d), text_valid (b, T), units and speech_valid (b, U) with T the
    longest text in the cache and U the longest answer (rounded up to whole blocks): one shape for
    the whole run. With `data.bucket_window` = w > 0, each epoch's permutation is cut into windows of
    w batches, each window sorted by answer length and cut into batches shuffled within it (as the
    Grain pipeline buckets), U the batch's own longest answer: less padding, a few shapes; the
    epoch's last incomplete batch is dropped. With `data.batching=pack`, each epoch's permutation is
    best-fit into rows of `data.pack_text` states and `data.pack_units` speech slots (`pack_rows`,
    4 · batch rows open), each answer padded to whole blocks, b rows a batch (`lay_out(packed=True)`):
    one shape, little padding; the epoch's last incomplete batch is dropped.
    """

    def __init__(self, cfg: TrainConfig, process_index: int = 0, process_count: int = 1):
        states = load(cfg.data.llm_states, cfg)
        self.block_size = cfg.model.speech_decoder.block_size
        self.seed, self.batch_size, self.window = cfg.data.seed, cfg.data.batch_size, cfg.data.bucket_window
        self.rows = local_rows(cfg.data.batch_size, process_index, process_count)
        self.hidden = np.split(states["hidden"], np.cumsum(states["text_lengths"])[:-1])
        self.units = np.split(states["units"], np.cumsum(states["unit_lengths"])[:-1])
        self.text_len = int(states["text_lengths"].max())
        self.unit_len = self._whole_blocks(int(states["unit_lengths"].max()))
        self.pad_id, self.index = cfg.model.speech_decoder.pad_id, 0
        self._epoch = (None, None)  # (epoch, its batches of example ids) when bucketing or packing
        if self.window and len(self) < self.batch_size:
            raise ConfigError(f"data.bucket_window={self.window}: {len(self)} cached records cannot fill a batch of "
                              f"{self.batch_size}")
        self.packed = cfg.data.batching == "pack"
        if self.packed:
            longest = (self.text_len, self.unit_len)
            self.text_len = cfg.data.pack_text or self.text_len
            self.unit_len = self._whole_blocks(cfg.data.pack_units) or self.unit_len
            if self.text_len < longest[0] or self.unit_len < longest[1]:
                raise ConfigError(f"data.pack_text={self.text_len} / data.pack_units={self.unit_len} cannot hold the "
                                  f"longest cached answer ({longest[0]} states, {longest[1]} speech slots)")
            self._per_epoch = []  # packed batches of epochs 0, 1, ...: each epoch packs into its own count

    def __len__(self) -> int:
        return len(self.hidden)

    def __iter__(self):
        return self

    def _whole_blocks(self, n: int) -> int:
        return -(-n // self.block_size) * self.block_size

    def _epoch_rows(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self))
        speech = [self._whole_blocks(len(u)) for u in self.units]
        return pack_rows(order, [len(h) for h in self.hidden], speech, text_len=self.text_len,
                         unit_len=self.unit_len, bins=4 * self.batch_size)

    def _packed_batch(self) -> list[list[int]]:
        """The rows (example ids each) of global batch `self.index`."""
        k, epoch = self.index, 0
        while True:
            while len(self._per_epoch) <= epoch:
                self._per_epoch.append(len(self._epoch_rows(len(self._per_epoch))) // self.batch_size)
            if k < self._per_epoch[epoch]:
                break
            k, epoch = k - self._per_epoch[epoch], epoch + 1
        if self._epoch[0] != epoch:
            self._epoch = (epoch, self._epoch_rows(epoch))
        return self._epoch[1][k * self.batch_size : (k + 1) * self.batch_size]

    def _global_batch(self) -> list[int]:
        """The example ids of global batch `self.index`."""
        n, b = len(self), self.batch_size
        if not self.window:
            return [np.random.default_rng([self.seed, g // n]).permutation(n)[g % n]
                    for g in range(self.index * b, (self.index + 1) * b)]  # global example counters
        epoch, k = divmod(self.index, n // b)
        if self._epoch[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)[: n // b * b]
            batches = []
            for w, start in enumerate(range(0, len(order), b * self.window)):
                window = sorted(order[start : start + b * self.window], key=lambda i: len(self.units[i]))
                cut = [window[i : i + b] for i in range(0, len(window), b)]
                batches += [cut[i] for i in np.random.default_rng([self.seed, epoch, w]).permutation(len(cut))]
            self._epoch = (epoch, batches)
        return self._epoch[1][k]

    def __next__(self) -> dict:
        if self.packed:
            rows = self._packed_batch()
            self.index += 1
            return lay_out(self.hidden, self.units, [rows[r] for r in self.rows], text_len=self.text_len,
                           unit_len=self.unit_len, block_size=self.block_size, pad_id=self.pad_id, packed=True)
        ids = self._global_batch()
        unit_len = self._whole_blocks(max(len(self.units[i]) for i in ids)) if self.window else self.unit_len
        batch = lay_out(self.hidden, self.units, [[ids[r]] for r in self.rows], text_len=self.text_len,
                        unit_len=unit_len, block_size=self.block_size, pad_id=self.pad_id, packed=False)
        self.index += 1
        return batch

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict):
        self.index = int(state["index"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.train.llm_states", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--params", required=True, help="params_io folder with the trained encoder, adaptor and LLM")
    parser.add_argument("--out", required=True, help=".npz file to write")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training config keys (data.manifest, ...)")
    args = parser.parse_args(argv)
    try:
        cfg = get_train_config(args.config, args.overrides)
        params, model_cfg = load_params(args.params)
        if model_cfg != cfg.model:
            raise ConfigError(f"--params {args.params} holds params of another model config: {model_cfg}")
        bad = BadRecords(strict=False)
        states = compute(params, cfg, bad)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"wrote {save(args.out, states)}: {len(states['text_lengths'])} records, skipped {bad.counts()}")


if __name__ == "__main__":
    main()
