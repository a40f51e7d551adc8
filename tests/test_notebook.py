"""experiments/colab_inference.ipynb executed headless (nbclient): every way it finds the project
(this checkout, an uploaded archive, a git URL, none); without a model (it trains the quick demo's:
that run is the suite's shared demo, tests/colab_run.py) and with one. Not run here: the microphone
(Colab's browser bridge)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "colab_inference.ipynb"


def _install_cell() -> str:
    return "".join(json.loads(NOTEBOOK.read_text())["cells"][1]["source"])


def _run_install_cell(cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _install_cell()], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_install_cell_finds_the_project_wherever_the_notebook_is_opened(tmp_path):
    checkout = _run_install_cell(ROOT / "experiments")
    assert checkout.returncode == 0 and f"mdm-jax from the checkout: {ROOT}" in checkout.stdout

    archive = tmp_path / "archive"
    archive.mkdir()
    subprocess.run(["git", "archive", "--format=zip", "--prefix=mdm-jax-main/", "-o", str(archive / "mdm-jax.zip"),
                    "HEAD"], cwd=ROOT, check=True)
    unpacked = _run_install_cell(archive)
    assert unpacked.returncode == 0, unpacked.stderr
    assert f"from the archive: {archive / 'mdm-jax-src' / 'mdm-jax-main'}" in unpacked.stdout

    clone = tmp_path / "url"
    clone.mkdir()
    cloned = _run_install_cell(clone, MDM_JAX_URL=str(ROOT))
    assert cloned.returncode == 0, cloned.stderr
    assert f"from the url: {clone / 'mdm-jax'}" in cloned.stdout and (clone / "mdm-jax" / "pyproject.toml").is_file()

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    missing = _run_install_cell(nothing)
    assert missing.returncode != 0 and "set PROJECT_URL to a git URL" in missing.stderr


def _execute(demo: Path) -> list:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["MDM_DEMO"] = str(demo)  # the kernel inherits the environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        del os.environ["MDM_DEMO"]
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _assert_spoke(outputs):
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "mdm-jax from the checkout" in text and "block 0:" in text and "first speech block after" in text
    audio = [o for o in outputs if "text/html" in o.get("data", {}) and "<audio" in o["data"]["text/html"]]
    assert len(audio) == 2  # the question and the spoken answer
    assert any("**Answer (text):**" in o.get("data", {}).get("text/markdown", "") for o in outputs)


def test_without_a_model_the_notebook_trains_the_quick_demo_and_speaks(demo_run):
    executed = nbformat.read(demo_run / NOTEBOOK.name, as_version=4)  # run by tests/colab_run.py
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    _assert_spoke(outputs)
    assert f"no model in {demo_run}: training the quick demo's model" in "".join(o.get("text", "") for o in outputs)


def test_notebook_streams_an_answer_from_a_given_model(demo_run):
    _assert_spoke(_execute(demo_run))
