"""The suite's shared quick demo, made by the Colab notebook's own branch for "no model given": runs
experiments/colab_inference.ipynb headless (nbclient) with DEMO = the empty folder OUT, so the notebook
trains the quick demo's model there, then streams an answer. Writes the executed notebook to
OUT/colab_inference.ipynb; exits 1 if a cell failed (tests/test_notebook.py reads it).

    python tests/colab_run.py OUT          # started in the background by tests/conftest.py
"""

import os
import sys
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "colab_inference.ipynb"


def main(out: Path) -> int:
    os.environ["MDM_DEMO"] = str(out)  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    try:
        nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
        status = 0
    except nbclient.exceptions.CellExecutionError as e:
        print(e, flush=True)
        status = 1
    nbformat.write(nb, out / NOTEBOOK.name)
    return status


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
