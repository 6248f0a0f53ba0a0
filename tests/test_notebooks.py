"""Every tutorial notebook runs top to bottom (in its smoke setting) as part of the tests, and
the committed files carry the outputs of a full run of their current code (`make notebooks`)."""

import importlib.util
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))

_spec = importlib.util.spec_from_file_location("nb_execute", NB_DIR / "execute.py")
nb_execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nb_execute)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("PYROBAYES_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    assert "setting: smoke" in _text(nb.cells[_first_code(nb)])


def _first_code(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_outputs_come_from_a_full_run(path):
    nb = nbformat.read(path, as_version=4)
    hint = f"{path.name}: run `make notebooks` and commit the result"
    meta = nb.metadata.get("pyrobayes", {})
    assert meta.get("setting") == "full", f"no record of a full run; {hint}"
    assert meta.get("source_sha256") == nb_execute.source_digest(nb), (
        f"the code changed since the outputs were made; {hint}"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    # one kernel, top to bottom: execution counts 1..n in order
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), hint
    assert "setting: full" in _text(code[0]), f"first cell did not report the full setting; {hint}"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"], f"error outputs; {hint}"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"no plot in the outputs; {hint}"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4 and os.path.isdir(NB_DIR)
