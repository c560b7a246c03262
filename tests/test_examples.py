"""The example notebook runs end to end on the default model (nbclient), and
opens every kind of run with actlab.open_run."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "tour.ipynb"


def test_tour_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {cell.source.splitlines()[-1]: cell.outputs for cell in notebook.cells if cell.cell_type == "code"}
    for kind in ("ActivationRun", "FeatureRun", "TraitRun", "ContrastRun", "PatchRun", "CircuitRun"):
        shown = [o for out in outputs.values() for o in out if "text/html" in o.get("data", {})]
        assert any(f"<b>{kind}</b>" in o["data"]["text/html"] for o in shown), kind
    assert (tmp_path / "runs" / "tour" / "french" / "manifest.json").is_file()
    errors = [o for out in outputs.values() for o in out if o.get("output_type") == "error"]
    assert not errors
