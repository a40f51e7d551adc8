"""Whisper in CTranslate2 format (`model.bin`) -> our `WhisperEncoder` and `WhisperDecoder` params.

`model.bin` (written by `ctranslate2.specs.ModelSpec._serialize`, little-endian):

    u32 version | str spec name | u32 spec revision (version >= 2) | u32 number of variables
    per variable: str name | u8 rank | u32 dims[rank] | u8 dtype | u32 bytes | raw data
    u32 number of aliases (version >= 3) | per alias: str alias | str target variable

where `str` is a u16 length (with the trailing NUL) then the bytes. Quantised weights `w` come with
`w_scale`: int8 rows were multiplied by scale[row], int16 by one scalar scale.

A CTranslate2 Whisper is the Hugging Face checkpoint renamed, with the self-attention q/k/v (and the
cross-attention k/v) fused into one matrix. We un-fuse and rename into Hugging Face keys, then apply
the same validated rules as `hf_whisper` (every tensor used exactly once, every shape checked).
"""

from __future__ import annotations

import json
import os
import re
import struct

import flax.linen as nn
import jax
import numpy as np

from mdm_jax.config.model import EncoderConfig, WhisperDecoderConfig
from mdm_jax.convert.hf_whisper import whisper_decoder_rules, whisper_encoder_rules
from mdm_jax.convert.rules import ConversionError, import_tensors
from mdm_jax.model.whisper import WhisperEncoder
from mdm_jax.model.whisper_decoder import WhisperDecoder

# dtype ids of `ctranslate2.specs.model_spec._dtype_to_type_id`; bfloat16 is read as raw uint16.
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, np.uint16)
_BFLOAT16 = 5


class _Reader:
    def __init__(self, path: str):
        with open(path, "rb") as f:
            self.buf, self.at, self.path = f.read(), 0, path

    def _need(self, num_bytes: int) -> None:
        if self.at + num_bytes > len(self.buf):
            raise ConversionError(
                f"{self.path}: truncated: {num_bytes} bytes wanted at byte {self.at} of {len(self.buf)}")

    def unpack(self, fmt: str):
        self._need(struct.calcsize(fmt))
        values = struct.unpack_from("<" + fmt, self.buf, self.at)
        self.at += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        n = self.unpack("H")
        text = self.buf[self.at : self.at + n - 1].decode("utf-8")
        self.at += n
        return text

    def array(self, dtype_id: int, shape: tuple, num_bytes: int) -> np.ndarray:
        if dtype_id >= len(_DTYPES):
            raise ConversionError(f"{self.path}: unknown dtype id {dtype_id} at byte {self.at}")
        self._need(num_bytes)
        a = np.frombuffer(self.buf, _DTYPES[dtype_id], num_bytes // np.dtype(_DTYPES[dtype_id]).itemsize, self.at)
        self.at += num_bytes
        if dtype_id == _BFLOAT16:  # bfloat16 is the top half of a float32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a.reshape(shape)


def read_ct2(path: str) -> tuple[str, dict[str, np.ndarray]]:
    """Reads a CTranslate2 `model.bin` -> (spec name, {variable name: array}).

    Aliases resolve to their target; quantised weights are dequantised to float32 and their
    `*_scale` variables dropped. Float16/bfloat16 stay as stored (float16 / float32).
    """
    r = _Reader(path)
    version = r.unpack("I")
    if not 4 <= version <= 6:  # 4 added dtype ids (ctranslate2 >= 2.0); 6 is current
        raise ConversionError(f"{path}: unsupported CTranslate2 binary version {version}")
    spec = r.string()
    r.unpack("I")  # spec revision: Whisper revisions 1..3 store the same variables
    variables = {}
    for _ in range(r.unpack("I")):
        name = r.string()
        shape = tuple(r.unpack("I") for _ in range(r.unpack("B")))
        dtype_id = r.unpack("B")
        variables[name] = r.array(dtype_id, shape, r.unpack("I"))
    for _ in range(r.unpack("I")):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    return spec, _dequantise(variables)


def _dequantise(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, w in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(f"{name}_scale")
        if scale is not None:  # int8: one scale per output row; int16: one scalar
            w = w.astype(np.float32) / scale.astype(np.float32).reshape(-1, *[1] * (w.ndim - 1))
        out[name] = w
    return out


def _split(w: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if w.shape[0] % parts:
        raise ConversionError(f"{name} of shape {w.shape} does not split into {parts} equal parts")
    return np.split(w, parts)


def _attention_to_hf(state: dict, ct2: str, hf: str, fused: tuple[tuple[str, ...], ...]) -> dict:
    """One attention block: the projections `fused[i]`, e.g. ('q', 'k', 'v'), live in `ct2/linear_i`."""
    out = {}
    for i, projections in enumerate(fused):
        name = f"linear_{i}"
        for kind in ("weight", "bias"):
            key = f"{ct2}/{name}/{kind}"
            for p, part in zip(projections, _split(state[key], len(projections), key)):
                if p == "k" and kind == "bias":
                    if np.any(part != 0):  # Whisper's key projection has no bias; fusing padded zeros
                        raise ConversionError(f"{key}: the key bias is not zero, our Whisper has none")
                    continue
                out[f"{hf}.{p}_proj.{kind}"] = part
    return out


def _layer_norm(state: dict, ct2: str, hf: str) -> dict:
    return {f"{hf}.weight": state[f"{ct2}/gamma"], f"{hf}.bias": state[f"{ct2}/beta"]}


def _linear(state: dict, ct2: str, hf: str) -> dict:
    return {f"{hf}.weight": state[f"{ct2}/weight"], f"{hf}.bias": state[f"{ct2}/bias"]}


def ct2_to_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 WhisperSpec variables -> Hugging Face `WhisperForConditionalGeneration` keys.

    Scalar settings (num_heads, activation, ...) and the tied projection alias are not tensors of
    the model and are dropped; a missing tensor raises `ConversionError` naming it.
    """
    try:
        return _ct2_to_hf(state)
    except KeyError as e:
        raise ConversionError(f"missing CTranslate2 variable {e.args[0]!r}") from None


def _num_layers(state: dict, side: str) -> int:
    return len({m[1] for k in state if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def _ct2_to_hf(state: dict) -> dict:
    hf = {}
    for side in ("encoder", "decoder"):
        for i in range(_num_layers(state, side)):
            ct2, name = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            hf |= _attention_to_hf(state, f"{ct2}/self_attention", f"{name}.self_attn", (("q", "k", "v"), ("out",)))
            hf |= _layer_norm(state, f"{ct2}/self_attention/layer_norm", f"{name}.self_attn_layer_norm")
            if side == "decoder":
                hf |= _attention_to_hf(state, f"{ct2}/attention", f"{name}.encoder_attn",
                                       (("q",), ("k", "v"), ("out",)))
                hf |= _layer_norm(state, f"{ct2}/attention/layer_norm", f"{name}.encoder_attn_layer_norm")
            hf |= _linear(state, f"{ct2}/ffn/linear_0", f"{name}.fc1")
            hf |= _linear(state, f"{ct2}/ffn/linear_1", f"{name}.fc2")
            hf |= _layer_norm(state, f"{ct2}/ffn/layer_norm", f"{name}.final_layer_norm")
        hf |= _layer_norm(state, f"{side}/layer_norm", f"model.{side}.layer_norm")
        hf[f"model.{side}.embed_positions.weight"] = state[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        hf |= _linear(state, f"encoder/{conv}", f"model.encoder.{conv}")
    hf["model.decoder.embed_tokens.weight"] = state["decoder/embeddings/weight"]
    return hf


def configs_from_ct2(state: dict[str, np.ndarray]) -> tuple[EncoderConfig, WhisperDecoderConfig]:
    """Sizes read off the tensors (and the stored head counts)."""
    vocab, d = state["decoder/embeddings/weight"].shape
    encoder = EncoderConfig(
        num_mel_bins=state["encoder/conv1/weight"].shape[1], d_model=d, num_layers=_num_layers(state, "encoder"),
        num_heads=int(state["encoder/num_heads"]), ffn_dim=state["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=state["encoder/position_encodings/encodings"].shape[0])
    decoder = WhisperDecoderConfig(
        vocab_size=vocab, d_model=d, num_layers=_num_layers(state, "decoder"),
        num_heads=int(state["decoder/num_heads"]),
        ffn_dim=state["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_target_positions=state["decoder/position_encodings/encodings"].shape[0])
    return encoder, decoder


def _abstract(module: nn.Module, *inputs) -> dict:
    return nn.unbox(jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a)["params"], *inputs))


def load_ct2_whisper(model_dir: str) -> dict:
    """Loads a CTranslate2 Whisper folder (`model.bin`, `config.json`).

    Returns {'encoder_config', 'encoder_params', 'decoder_config', 'decoder_params',
    'suppress_ids', 'suppress_ids_begin'}: params are float32 numpy trees for `WhisperEncoder`
    and `WhisperDecoder`; the suppressed token ids come from `config.json`.
    """
    spec, state = read_ct2(os.path.join(model_dir, "model.bin"))
    if spec != "WhisperSpec":
        raise ConversionError(f"{model_dir}/model.bin holds a {spec!r}, not a 'WhisperSpec'")
    enc_cfg, dec_cfg = configs_from_ct2(state)
    hf = ct2_to_hf(state)
    mel = jax.ShapeDtypeStruct((1, enc_cfg.num_mel_bins, 4), np.float32)
    tokens = jax.ShapeDtypeStruct((1, 2), np.int32)
    encoded = jax.ShapeDtypeStruct((1, 3, dec_cfg.d_model), np.float32)
    is_encoder = lambda k: k.startswith("model.encoder.")
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    return {
        "encoder_config": enc_cfg,
        "encoder_params": import_tensors(hf, whisper_encoder_rules(enc_cfg), _abstract(WhisperEncoder(enc_cfg), mel),
                                         ignore=lambda k: not is_encoder(k)),
        "decoder_config": dec_cfg,
        "decoder_params": import_tensors(hf, whisper_decoder_rules(dec_cfg),
                                         _abstract(WhisperDecoder(dec_cfg), tokens, encoded), ignore=is_encoder),
        "suppress_ids": tuple(config.get("suppress_ids", ())),
        "suppress_ids_begin": tuple(config.get("suppress_ids_begin", ())),
    }
