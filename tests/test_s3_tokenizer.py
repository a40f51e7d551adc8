"""S3Tokenizer v2 / v3 against the `s3tokenizer` package (the PyTorch reference) with random weights, on real
speech (the AISHELL clips the reference ships, the embedded corpus's Piper voice) in ragged batches: the
log-mel within 1e-4 of its front end, the pre-FSQ activations within 1e-4, the ids identical except at
quantization ties (a dim whose 0.999·tanh lies within the activation error of the 0.5 threshold);
bf16 compute keeps the ids but for near-ties; a batch gives each row what it gives alone."""

import functools
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from cosyvoice_reference import one_torch_thread  # noqa: F401 (an autouse fixture)
from s3tokenizer_reference import reference

from mdm_jax.convert.rules import ConversionError
from mdm_jax.convert.s3_tokenizer import read_s3_state, s3_from_torch
from mdm_jax.model import s3_tokenizer as s3

TOL = 1e-4
REDUCED = dict(d_model=128, num_heads=2, num_layers=2)  # heads stay 64 wide: the reference's rotary table is
TIE = 2 * TOL  # |d tanh| <= |d h|: an activation error of 1e-4 moves 0.999·tanh by less than this


@pytest.fixture(scope="module")
def speech():
    """Real speech of several lengths (4.2 s, 4.1 s Mandarin; Piper English), a 1.3 s crop, 0.3 s of noise."""
    reference()
    assets = resources.files("s3tokenizer") / "assets"
    clips = [sf.read(str(assets / f"BAC009S0764W012{i}.wav"), dtype="float32")[0] for i in (1, 2)]
    try:
        from experiments.corpus import tts

        clips.append(tts.synthesize("nine minus four is five", tts.ASSISTANT_VOICE))
    except ImportError:  # the `data` extra (Piper) absent: the shipped clips alone
        pass
    noise = np.random.default_rng(0).normal(0, 0.05, 4800).astype(np.float32)
    return [clips[0], clips[1][5000:25_800], *clips[2:], noise, clips[1]]


def fsq_margin(h):
    """(..., fsq_dims) -> (...) how far a token is from a tie: min over dims of |0.999·tanh(h)| distance to 0.5,
    the rounding threshold (0 = a tie: another implementation may round the other way)."""
    return np.min(np.abs(np.abs(np.tanh(np.asarray(h, np.float32)) * s3.FSQ_SCALE) - 0.5), axis=-1)


def reference_model(version: str, cfg: s3.S3TokenizerConfig, seed: int = 0):
    """The reference S3TokenizerV2 / V3 at `cfg`'s sizes: torch's default init, LayerNorms perturbed."""
    import torch

    s3tokenizer = reference()
    from s3tokenizer.model_v3 import ModelConfigV3, S3TokenizerV3

    torch.manual_seed(seed)
    sizes = dict(n_mels=cfg.n_mels, n_audio_state=cfg.d_model, n_audio_head=cfg.num_heads,
                 n_audio_layer=cfg.num_layers)
    model = (s3tokenizer.S3TokenizerV2("speech_tokenizer_v2_25hz", s3tokenizer.model_v2.ModelConfig(**sizes))
             if version == "v2" else S3TokenizerV3("speech_tokenizer_v3_25hz", ModelConfigV3(**sizes))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_ln." in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def reference_run(model, waves):
    """The reference's own batch (its mel per clip, padded to the longest) -> (mels, pre-FSQ, ids, lengths)."""
    import torch

    s3tokenizer = reference()
    mels = [s3tokenizer.log_mel_spectrogram(torch.from_numpy(w)) for w in waves]
    mel, mel_len = s3tokenizer.padding(mels)
    with torch.no_grad():
        hidden, lengths = model.encoder(mel, mel_len)
        pre = model.quantizer._codebook.project_down(hidden).float().numpy()
        ids, id_lengths = model.quantize(mel, mel_len)
    assert (lengths == id_lengths).all()
    return [m.numpy() for m in mels], pre, ids.numpy(), lengths.numpy()


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def _ours(params, cfg, audio, samples, dtype="float32"):
    h, tokens = s3.encode(params, cfg, audio, samples, jnp.dtype(dtype))
    return s3.log_mel(audio, samples, cfg.n_mels), h, tokens


def compare(model, cfg, waves, dtype="float32"):
    """Ours (bucketed batch) vs the reference (its batch) on `waves` -> a summary; asserts lengths agree."""
    params = s3_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
    ref_mels, ref_pre, ref_ids, lengths = reference_run(model, waves)
    audio, samples = s3.pad_batch(waves)
    mel, h, tokens = jax.device_get(_ours(params, cfg, audio, samples, dtype))
    np.testing.assert_array_equal(tokens, lengths)
    ids = np.asarray(s3.fsq_ids(h))
    rows = [slice(0, n) for n in lengths]
    mel_err = max(np.abs(mel[i][:, : m.shape[1]] - m).max() for i, m in enumerate(ref_mels))
    pre_err = max(np.abs(h[i][r] - ref_pre[i][r]).max() for i, r in enumerate(rows))
    same = np.concatenate([ids[i][r] == ref_ids[i][r] for i, r in enumerate(rows)])
    margins = np.concatenate([np.asarray(fsq_margin(ref_pre[i][r])) for i, r in enumerate(rows)])
    summary = dict(mel_err=float(mel_err), pre_err=float(pre_err), tokens=int(same.size), agree=float(same.mean()),
                   mismatch_margins=margins[~same].tolist(), min_margin=float(margins.min()))
    print(f"\n{dtype} {cfg.num_layers} layers d={cfg.d_model}: {summary}")
    return summary, params


def _assert_parity(summary):
    assert summary["mel_err"] < TOL
    assert summary["pre_err"] < TOL
    assert all(m < TIE for m in summary["mismatch_margins"]), summary  # any id mismatch is a tie


@pytest.fixture(scope="module")
def reduced_v2():
    cfg = s3.S3TokenizerConfig(**REDUCED)
    return cfg, reference_model("v2", cfg)


def test_log_mel_matches_reference_front_end(speech):
    import torch

    s3tokenizer = reference()
    audio, samples = s3.pad_batch(speech)
    mel = np.asarray(jax.jit(s3.log_mel)(audio, samples))
    for i, w in enumerate(speech):
        ref = s3tokenizer.log_mel_spectrogram(torch.from_numpy(w)).numpy()
        assert ref.shape[1] == samples[i] // 160
        np.testing.assert_allclose(mel[i, :, : ref.shape[1]], ref, atol=TOL, rtol=0)
        assert not mel[i, :, ref.shape[1]:].any()


def test_v2_reduced_matches_reference(speech, reduced_v2):
    summary, _ = compare(reduced_v2[1], reduced_v2[0], speech)
    _assert_parity(summary)
    assert summary["agree"] == 1.0 or summary["mismatch_margins"]


def test_v2_real_size_matches_reference(speech):
    cfg = s3.PRESETS["v2"]
    summary, _ = compare(reference_model("v2", cfg, seed=1), cfg, [speech[1][:9_000], speech[4][:12_000]])
    _assert_parity(summary)


def test_v3_reduced_matches_reference(speech):
    cfg = s3.S3TokenizerConfig(**{**REDUCED, "num_layers": 3})
    summary, _ = compare(reference_model("v3", cfg, seed=2), cfg, speech[:3])
    _assert_parity(summary)


def test_bf16_ids_agree_but_for_near_ties(speech, reduced_v2):
    summary, _ = compare(reduced_v2[1], reduced_v2[0], speech, dtype="bfloat16")
    assert summary["agree"] > 0.9, summary
    assert all(m < 0.05 for m in summary["mismatch_margins"]), summary  # bf16 moves activations by ~1e-2


def test_rows_alone_equal_rows_batched(speech, reduced_v2):
    cfg, model = reduced_v2
    tok = s3.S3Tokenizer(s3_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, cfg), cfg)
    batched = tok(speech)
    for wave, ids in zip(speech, batched):
        np.testing.assert_array_equal(tok([wave])[0], ids)
        assert len(ids) == s3.num_tokens(len(wave)) and ids.dtype == np.int32
        assert ids.min() >= 0 and ids.max() < cfg.codebook_size


def test_too_long_or_too_short_audio_is_named(reduced_v2):
    cfg, model = reduced_v2
    tok = s3.S3Tokenizer(s3_from_torch({k: v.numpy() for k, v in model.state_dict().items()}, cfg), cfg)
    with pytest.raises(ValueError, match="waveform 1: 480001 samples"):
        tok([np.zeros(1600, np.float32), np.zeros(480_001, np.float32)])
    with pytest.raises(ValueError, match="waveform 0: 100 samples"):
        tok([np.zeros(100, np.float32)])


def test_fsq_ids_are_base_three_digits():
    h = np.array([[-3.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0], [3.0] * 8, [-3.0] * 8], np.float32)
    np.testing.assert_array_equal(np.asarray(s3.fsq_ids(h)), [0 + 1 * 3 + 2 * 9 + sum(3**i for i in range(3, 8)),
                                                               6560, 0])


def released_onnx(state: dict, path, drop=(), extra=None, reshape=None):
    """`state` (the reference's keys) written as speech_tokenizer_v2.onnx lays it out: convs and the quantizer by
    their released initializer names, every block tensor read by a node named as in the export (MatMul weights
    (in, out)). The graph is not runnable: the converter, like the reference's `onnx2torch`, reads names only."""
    import onnx
    from onnx import helper, numpy_helper

    from mdm_jax.convert.s3_tokenizer import ONNX_V2_NAMES

    by_key = {key: name for name, key in ONNX_V2_NAMES.items()}
    inits, nodes, serial = {}, [], iter(range(2300, 9999))

    def read(node: str, op: str, *keys: str):
        names = []
        for key in keys:
            name = by_key.get(key) or f"onnx::{op}_{next(serial)}"
            w = state[key].T if op == "MatMul" else state[key]
            inits[name] = w if reshape is None or key != reshape[0] else w.reshape(reshape[1])
            names.append(name)
        nodes.append(helper.make_node(op, ["x", *names], [f"{node}_output_0"], name=node))

    read("/conv1/Conv", "Conv", "encoder.conv1.weight", "encoder.conv1.bias")
    read("/conv2/Conv", "Conv", "encoder.conv2.weight", "encoder.conv2.bias")
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    for i in range(layers):
        b = f"encoder.blocks.{i}"
        for ln in ("attn_ln", "mlp_ln"):
            read(f"/blocks.{i}/{ln}/LayerNormalization", "LayerNormalization", f"{b}.{ln}.weight", f"{b}.{ln}.bias")
        for proj in ("query", "key", "value", "out"):
            read(f"/blocks.{i}/attn/{proj}/MatMul", "MatMul", f"{b}.attn.{proj}.weight")
            if proj != "key":
                read(f"/blocks.{i}/attn/{proj}/Add", "Add", f"{b}.attn.{proj}.bias")
        read(f"/blocks.{i}/attn/fsmn_block/Conv", "Conv", f"{b}.attn.fsmn_block.weight")
        for j in ("0", "2"):
            read(f"/blocks.{i}/mlp/mlp.{j}/MatMul", "MatMul", f"{b}.mlp.{j}.weight")
            read(f"/blocks.{i}/mlp/mlp.{j}/Add", "Add", f"{b}.mlp.{j}.bias")
    read("/quantizer/project_down/MatMul", "MatMul", "quantizer._codebook.project_down.weight")
    read("/quantizer/project_down/Add", "Add", "quantizer._codebook.project_down.bias")
    if extra:
        inits["onnx::MatMul_9999"] = np.zeros((4, 4), np.float32)
        nodes.append(helper.make_node("MatMul", ["x", "onnx::MatMul_9999"], ["y"], name=extra))
    kept = {name: w for name, w in inits.items() if name not in drop}
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    tensors = [numpy_helper.from_array(np.ascontiguousarray(w), name) for name, w in kept.items()]
    graph = helper.make_graph(nodes, "speech_tokenizer_v2", [x], [], tensors)
    onnx.save(helper.make_model(graph), str(path))


@pytest.fixture(scope="module")
def onnx_file(reduced_v2, tmp_path_factory):
    cfg, model = reduced_v2
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("s3") / "speech_tokenizer_v2.onnx"
    released_onnx(state, path)
    return path, state


def test_onnx_layout_is_what_the_reference_reads(onnx_file):
    """The reference's own ONNX -> torch renaming reads our stand-in file back to the model's state dict."""
    path, state = onnx_file
    ref = reference().onnx2torch(str(path), None, False)
    assert sorted(ref) == sorted(state)
    for k, v in ref.items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)


def test_onnx_and_state_dict_convert_alike(onnx_file, reduced_v2, speech, tmp_path):
    from mdm_jax import cli

    path, state = onnx_file
    cfg, model = reduced_v2
    from_state = s3_from_torch(state, cfg)
    jax.tree.map(np.testing.assert_array_equal, s3_from_torch(read_s3_state(path), cfg), from_state)
    sizes = [f"{k}={v}" for k, v in REDUCED.items()]
    assert cli.main(["convert", "s3tokenizer", "--src", str(path), "--out", str(tmp_path / "tok"), *sizes]) == 0
    tok = s3.S3Tokenizer.load(tmp_path / "tok")
    _, _, ref_ids, lengths = reference_run(model, speech[:2])
    for got, want, n in zip(tok(speech[:2]), ref_ids, lengths):
        np.testing.assert_array_equal(got, want[:n])
    torch = pytest.importorskip("torch")
    torch.save(model.state_dict(), tmp_path / "s3.pt")
    assert cli.main(["convert", "s3tokenizer", "--src", str(tmp_path / "s3.pt"), "--out", str(tmp_path / "pt"),
                     *sizes]) == 0
    jax.tree.map(np.testing.assert_array_equal, s3.S3Tokenizer.load(tmp_path / "pt").params, from_state)


@pytest.mark.parametrize("fault, message", [
    (dict(drop=("onnx::Conv_2218",)), "missing key 'encoder.conv2.weight'"),
    (dict(extra="/blocks.0/attn/gate/MatMul"), "initializer 'onnx::MatMul_9999' \\(read by /blocks.0/attn/gate/MatMul"),
    (dict(reshape=("encoder.blocks.1.attn.fsmn_block.weight", (64, 2, 31))),
     "'encoder.blocks.1.attn.fsmn_block.weight' has shape \\(64, 2, 31\\), expected \\(128, 1, 31\\)"),
])
def test_onnx_faults_are_named(onnx_file, reduced_v2, tmp_path, fault, message):
    _, state = onnx_file
    path = tmp_path / "bad.onnx"
    released_onnx(state, path, **fault)
    with pytest.raises(ConversionError, match=message):
        s3_from_torch(read_s3_state(path), reduced_v2[0])


def test_state_dict_faults_are_named(onnx_file, reduced_v2):
    _, state = onnx_file
    cfg = reduced_v2[0]
    with pytest.raises(ConversionError, match="missing key 'encoder.blocks.1.mlp.2.bias'"):
        s3_from_torch({k: v for k, v in state.items() if k != "encoder.blocks.1.mlp.2.bias"}, cfg)
    with pytest.raises(ConversionError, match="unexpected key 'encoder.blocks.2.attn.key.weight'"):
        s3_from_torch({**state, "encoder.blocks.2.attn.key.weight": state["encoder.blocks.1.attn.key.weight"]}, cfg)
    with pytest.raises(ConversionError, match="'encoder.blocks.0.attn.query.weight' has shape \\(128, 64\\)"):
        s3_from_torch({**state, "encoder.blocks.0.attn.query.weight": np.zeros((128, 64), np.float32)}, cfg)


def test_bench_smoke_writes_its_json(tmp_path):
    """`experiments.bench_s3_tokenizer` (docs/real_weights.md's throughput table) end to end at reduced size."""
    from experiments import bench_s3_tokenizer

    result = bench_s3_tokenizer.main(["--small", "--batches", "2", "--seconds", "1", "--repeats", "1",
                                      "--out", str(tmp_path / "s3.json")])
    assert [(r["batch"], r["seconds"]) for r in result["rows"]] == [(2, 1.0)] and result["rows"][0]["call_s"] > 0
    assert (tmp_path / "s3.json").is_file()
