"""The benchmarks run end to end at the smallest size (their numbers are read from JSON, never asserted):
the device script `experiments/gpu_bench.sh --smoke` runs them all, on CPU here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from experiments import bench_compile

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """gpu_bench.sh --smoke's output folder (the three benchmarks, tiny shapes)."""
    out = tmp_path_factory.mktemp("gpu_bench")
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    done = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_bench.sh"), "--smoke", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_gpu_bench_smoke_writes_every_json(smoke):
    assert sorted(p.name for p in smoke.glob("*.json")) == ["compile.json", "decode_b1.json", "train_full.json"]


def test_bench_decode_writes_the_documented_json(smoke):
    result = json.loads((smoke / "decode_b1.json").read_text())
    assert {"device", "runs"} <= result.keys()
    assert [(r["config"], r["talker"]) for r in result["runs"]] == [("tiny", "anchor")]
    for run in result["runs"]:
        rows, block = run["rows"], run["rows"][0]["block"]
        assert [(r["method"], r["denoise_steps"], r["threshold"]) for r in rows] == [
            ("ar", None, None), ("mtp", None, None), ("mdm", 1, None), ("mdm", 4, None), ("mdm", None, 0.5)]
        for r in rows:
            assert {"tokens_per_s", "forwards_per_token", "first_chunk_s", "compile_s", "speedup_vs_ar",
                    "first_chunk_vs_ar", "block", "ms_per_forward", "weight_bytes", "kv_bytes",
                    "bytes_per_s"} <= r.keys()
        assert rows[2]["forwards_per_token"] == 1 / block and rows[3]["forwards_per_token"] == 4 / block
        ar, mtp = rows[0], rows[1]
        assert mtp["weight_bytes"] > ar["weight_bytes"] == rows[2]["weight_bytes"]  # MTP reads its modules too


def test_bench_compile_and_train_full_json(smoke):
    compile_ = json.loads((smoke / "compile.json").read_text())
    assert [(r["program"], r["layout"]) for r in compile_["rows"]] == [("sample_ar", "decoding")]
    assert all(r["compile_s"] > 0 and r["lower_s"] > 0 for r in compile_["rows"]) and compile_["ratios"] == []
    train = json.loads((smoke / "train_full.json").read_text())
    assert [r["stage"] for r in train["rows"]] == ["text"]
    for r in train["rows"]:
        assert r["flops_per_step"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] is None  # a CPU has no peak


def test_every_other_program_lowers_from_shapes_alone():
    """What bench_compile compiles beyond the smoke run's AR sampler lowers (compiling is the smoke run's)."""
    for program, layout in [("train_text", "scanned"), ("train_text", "unrolled"), ("train_speech", "scanned"),
                            ("train_speech", "unrolled"), ("sample_mdm", "decoding")]:
        lowered = bench_compile.lowered("tiny", program, layout, batch=2, num_blocks=1)
        assert isinstance(lowered, jax.stages.Lowered)


def test_compile_ratios_pair_the_layouts_and_bound_timeouts():
    rows = [{"config": "c", "program": "train_text", "layout": "scanned", "lower_s": 1.0, "compile_s": 3.0},
            {"config": "c", "program": "train_text", "layout": "unrolled", "lower_s": 2.0, "compile_s": 10.0},
            {"config": "c", "program": "train_speech", "layout": "scanned", "lower_s": 1.0, "compile_s": 1.0},
            {"config": "c", "program": "train_speech", "layout": "unrolled", "timed_out_s": 60.0},
            {"config": "c", "program": "sample_ar", "layout": "decoding", "lower_s": 1.0, "compile_s": 1.0}]
    assert bench_compile.ratios(rows) == [
        {"config": "c", "program": "train_text", "unrolled_over_scanned": 3.0, "lower_bound": False},
        {"config": "c", "program": "train_speech", "unrolled_over_scanned": 30.0, "lower_bound": True}]


def test_bench_packing_writes_padding_and_throughput_for_both_stages(tmp_path):
    out = tmp_path / "packing.json"
    done = subprocess.run([sys.executable, "-m", "experiments.bench_packing", "--examples", "12", "--batch", "4",
                           "--corpus", str(tmp_path / "none"), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for stage in ("stage I", "stage II"):
        r = result["long-tailed"][stage]
        for mode in ("bucket", "pack"):
            assert 0 <= r[mode]["row_padding"] <= r[mode]["padding"] < 1 and r[mode]["useful_tokens_per_s"] > 0
        assert r["pack"]["row_padding"] < r["bucket"]["row_padding"]  # packing fills rows the tail leaves empty
    assert "| long-tailed | stage II | pack |" in done.stdout
