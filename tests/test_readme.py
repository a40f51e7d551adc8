"""Everything the README shows is run here: its Python blocks in order, then its CLI lines."""

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()
# Modules whose `python -m` is `main(argv)`: run in this process (JAX imported and compiled once), not one
# process each. Any other command, or one with shell operators, runs in its own process.
IN_PROCESS = ("mdm_jax.cli", "mdm_jax.train", "experiments.corpus.build")
# End-to-end runs that have their own tests: tests/test_demo.py runs experiments.demo, tests/test_sweep.py
# experiments.sweep, tests/test_learning_curves.py the curves and the diagnosis (on the shared `demo_run`).
COVERED_ELSEWHERE = ("experiments.demo", "experiments.sweep", "experiments.learning_curves",
                     "experiments.diagnose_talker")


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _expand(args: str, cwd) -> list[str]:
    """The words bash makes of `args` (quotes, $(...), globs), as the shell would pass them to python."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {args}"], capture_output=True, text=True, cwd=cwd,
                         check=True)
    return out.stdout.split("\0")[:-1]


def _has_shell_operator(args: str) -> bool:
    lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
    return any(set(token) <= set("();<>|&") for token in lexer)


def _run_in_process(module: str, argv: list[str]) -> int:
    """`python -m module *argv`'s exit status, from `main(argv)` (None or a SystemExit code)."""
    package = importlib.util.find_spec(module).submodule_search_locations is not None
    try:
        status = importlib.import_module(f"{module}.__main__" if package else module).main(argv)
    except SystemExit as e:
        status = e.code
    return 0 if status is None else status


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
        args = cmd[len("python"):]
        words = shlex.split(args)
        module = words[1] if words[0] == "-m" else None
        if module in COVERED_ELSEWHERE:
            continue
        if module in IN_PROCESS and not _has_shell_operator(args):
            try:
                status = _run_in_process(module, _expand(args, tmp_path)[2:])
            except Exception as e:
                e.add_note(f"README command: {cmd}")
                raise
            assert status == 0, f"{cmd}: exit status {status}"
            continue
        line = shlex.quote(sys.executable) + args  # the shell expands what the README shows
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
