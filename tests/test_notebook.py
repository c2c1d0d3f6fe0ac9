"""The example notebook runs, top to bottom, in a fresh kernel (so it never rots)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "cilearn_api.ipynb"


def test_the_example_notebook_runs_and_plots_twice(tmp_path, monkeypatch):
    # The kernel imports this checkout's cilearn, runs in a temporary folder (its runs/ go there), one thread.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for version in (0, 1):  # run again as it is, as a user re-runs a notebook: a new version folder
        run_notebook(tmp_path)
        assert (tmp_path / "runs" / "notebook" / f"version_{version}" / "icarl" / "metrics.json").is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "notebook").iterdir()) == ["version_0", "version_1"]


def run_notebook(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.reset_execution_trackers()
    kernel = client.setup_kernel()
    try:
        kernel.__enter__()
    except Exception as exc:  # no kernel spec, or a kernel that does not start here: not the notebook's fault
        pytest.skip(f"no Jupyter kernel could start ({type(exc).__name__}: {exc}); pip install ipykernel")
    started = time.perf_counter()
    try:
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
    finally:
        kernel.__exit__(None, None, None)
    seconds = time.perf_counter() - started
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot cell shows no figure"
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "Task(4, new_classes=[8, 9]" in text and "finetune: average incremental accuracy" in text
    print(f"notebook cells ran in {seconds:.1f} s")
