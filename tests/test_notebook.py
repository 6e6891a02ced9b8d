"""The quickstart notebook runs top to bottom (code cells executed in order, offline checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.checkpoints import make_sam_checkpoint, make_yolo_checkpoint

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMLABEL_DETECTOR", str(make_yolo_checkpoint(tmp_path / "w" / "det.pt", ["disc"])))
    monkeypatch.setenv("SAMLABEL_SEGMENTER", str(make_sam_checkpoint(tmp_path / "w" / "mobile_sam.pt")))
    monkeypatch.setenv("SAMLABEL_WORK", str(tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"quickstart cell {cell['id']}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "OK" in out and (tmp_path / "work" / "preview.png").is_file()
    assert namespace["converted"].report["instances_total"] == namespace["report"]["instances_total"] > 0


@pytest.mark.parametrize("cell_type", ["code"])
def test_notebook_has_no_stored_outputs(cell_type):
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == cell_type]
    assert cells and all(c["outputs"] == [] for c in cells)
