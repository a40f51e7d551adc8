"""Everything the README shows is run here: its Python blocks in order, then its CLI lines."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_then_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102

    commands = [line.split("  #")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    commands = [c for c in commands if c.startswith("python ")]
    assert commands, "the README shows no CLI command"
    root = Path(__file__).parents[1]
    for cmd in commands:
        line = shlex.quote(sys.executable) + cmd[len("python"):]  # the shell expands what the README shows
        out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                             env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
        assert out.returncode == 0, f"{cmd}\n{out.stderr[-2000:]}"


def test_readme_manifest_examples_read(tmp_path):
    from data_pipelines.manifest import read_manifest, read_vocalnet
    from data_pipelines.validation import BadRecords

    ours, vocalnet = _blocks("json")
    (tmp_path / "m.jsonl").write_text(ours)
    (tmp_path / "v.json").write_text(vocalnet)
    bad = BadRecords(strict=True)
    records = read_manifest(str(tmp_path / "m.jsonl"), bad) + read_vocalnet(str(tmp_path / "v.json"), bad)
    assert [r.id for r in records] == ["q1", "q2", "q1"]
    assert records[1].assistant_units == (12, 7, 7, 301) and records[2].assistant_text == "four"
