"""experiments/colab_inference.ipynb executed headless (nbclient) against the quick demo's model."""

from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "colab_inference.ipynb"


def test_notebook_streams_an_answer_from_the_demo_model(demo_run, monkeypatch):
    monkeypatch.setenv("MDM_DEMO", str(demo_run))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "block 0:" in text and "first speech block after" in text
    audio = [o for o in outputs if "text/html" in o.get("data", {}) and "<audio" in o["data"]["text/html"]]
    assert len(audio) == 2  # the question and the spoken answer
    assert any("**Answer (text):**" in o.get("data", {}).get("text/markdown", "") for o in outputs)
