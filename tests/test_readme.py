"""Everything the README and the docs pages show is run here: page by page in `PAGES` order, each page's
Python blocks in order (one namespace shared by every page), then its CLI lines. Every relative link of
those pages points at a file that exists."""

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
# The pages in the order their sections had in the one README they were cut from, so that a block builds
# on what earlier ones made, as it did there: README.md runs where its "Command line" section sat, after
# docs/python_api.md (which writes the `hf_llama` folder it converts) and docs/data.md (the corpus it
# answers from). docs/tpu.md shows no code; a new page must be added here (test_every_page_is_listed).
PAGES = ("docs/paper.md", "docs/demo.md", "docs/talker_quality.md", "docs/serving.md", "docs/python_api.md",
         "docs/masked_diffusion.md", "docs/data.md", "docs/speed.md", "README.md", "docs/training.md",
         "docs/real_weights.md", "docs/tpu.md", "docs/claims.md")
# Modules whose `python -m` is `main(argv)`: run in this process (JAX imported and compiled once), not one
# process each. Any other command, or one with shell operators, runs in its own process.
IN_PROCESS = ("mdm_jax.cli", "mdm_jax.train", "experiments.corpus.build")
# End-to-end runs that have their own tests: tests/test_demo.py runs experiments.demo, tests/test_sweep.py
# experiments.sweep, tests/test_learning_curves.py the curves and the diagnosis (on the shared `demo_run`).
COVERED_ELSEWHERE = ("experiments.demo", "experiments.sweep", "experiments.learning_curves",
                     "experiments.diagnose_talker")


def _blocks(page, lang):
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / page).read_text(), flags=re.S)


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


def _run_command(cmd: str, page: str, cwd: Path):
    args = cmd[len("python"):]
    words = shlex.split(args)
    module = words[1] if words[0] == "-m" else None
    if module in COVERED_ELSEWHERE:
        return
    if module in IN_PROCESS and not _has_shell_operator(args):
        try:
            status = _run_in_process(module, _expand(args, cwd)[2:])
        except Exception as e:
            e.add_note(f"{page} command: {cmd}")
            raise
        assert status == 0, f"{page}: {cmd}: exit status {status}"
        return
    line = shlex.quote(sys.executable) + args  # the shell expands what the page shows
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, cwd=cwd, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, f"{page}: {cmd}\n{out.stderr[-2000:]}"


def test_every_page_is_listed():
    pages = {str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md")} | {"README.md"}
    assert not pages - set(PAGES), f"add to PAGES (tests/test_readme.py): {sorted(pages - set(PAGES))}"
    missing = set(PAGES) - pages
    assert not missing, f"PAGES lists pages that do not exist: {sorted(missing)}"


def test_pages_python_then_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace, ran = {}, 0
    for page in PAGES:
        for block in _blocks(page, "python"):
            exec(compile(block, page, "exec"), namespace)  # noqa: S102
        commands = [line.split("  #")[0].strip() for block in _blocks(page, "bash") for line in block.splitlines()]
        for cmd in (c for c in commands if c.startswith("python ")):
            _run_command(cmd, page, tmp_path)
            ran += 1
    assert ran, "no page shows a CLI command"


def test_manifest_examples_read(tmp_path):
    from data_pipelines.manifest import read_manifest, read_vocalnet
    from data_pipelines.validation import BadRecords

    ours, vocalnet = [block for page in PAGES for block in _blocks(page, "json")]
    (tmp_path / "m.jsonl").write_text(ours)
    (tmp_path / "v.json").write_text(vocalnet)
    bad = BadRecords(strict=True)
    records = read_manifest(str(tmp_path / "m.jsonl"), bad) + read_vocalnet(str(tmp_path / "v.json"), bad)
    assert [r.id for r in records] == ["q1", "q2", "q1"]
    assert records[1].assistant_units == (12, 7, 7, 301) and records[2].assistant_text == "four"


LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def test_relative_links_resolve():
    """Every link of a page that is not a URL or an anchor names a file or folder that exists."""
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", (ROOT / page).read_text(), flags=re.S)  # code shows no links
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in LINK.findall(text):
            path = target.split("#")[0]
            if not path or re.match(r"[a-z][a-z0-9+.-]*:", path):
                continue
            resolved = (ROOT / page).parent / path
            if not resolved.exists():
                broken.append(f"{page}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)
