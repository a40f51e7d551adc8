"""The benchmarks run end to end at the smallest size (their numbers are read from JSON, never asserted)."""

import json

from experiments import bench_decode


def test_bench_decode_writes_the_documented_json(tmp_path):
    out = tmp_path / "decode.json"
    bench_decode.main(["--configs", "tiny,tiny-vocalnet", "--out", str(out), "--num-blocks", "1",
                       "--denoise-steps", "1,4", "--threshold", "0.5", "--repeats", "1", "--text-len", "8"])
    result = json.loads(out.read_text())
    assert {"device", "runs"} <= result.keys()
    assert [(r["config"], r["talker"]) for r in result["runs"]] == [("tiny", "anchor"), ("tiny-vocalnet", "vocalnet")]
    for run in result["runs"]:
        rows, block = run["rows"], run["rows"][0]["block"]
        assert [(r["method"], r["denoise_steps"], r["threshold"]) for r in rows] == [
            ("ar", None, None), ("mtp", None, None), ("mdm", 1, None), ("mdm", 4, None), ("mdm", None, 0.5)]
        for r in rows:
            assert {"tokens_per_s", "forwards_per_token", "first_chunk_s", "compile_s", "speedup_vs_ar",
                    "first_chunk_vs_ar", "block"} <= r.keys()
        assert rows[2]["forwards_per_token"] == 1 / block and rows[3]["forwards_per_token"] == 4 / block
