"""The datasets written today equal those recorded before the architecture change, file for file."""

from __future__ import annotations

import json

import pytest

from pipeline.run.outputs import QUALITY_FIELDS
from tests.golden_cases import CASES, GOLDEN, WHOLE, dataset_files, run_case

#: Fields added to every COCO annotation after the recording (the quality signals); the rest must not change.
ADDED = {*QUALITY_FIELDS, "overlap_source_id"}


def _without_added(coco: dict) -> dict:
    for ann in coco["annotations"]:
        assert {"box_fit", "flags", "overlap"} <= set(ann)  # the signals are there ...
        for key in ADDED:
            ann.pop(key, None)  # ... and everything else is as recorded
    return coco


@pytest.mark.parametrize("name", sorted(CASES))
def test_dataset_equals_the_recorded_one(tmp_path, name):
    src, out = run_case(name, tmp_path)
    got = dataset_files(out, src)
    recorded = sorted(p.relative_to(GOLDEN / name).as_posix() for p in (GOLDEN / name).rglob("*") if p.is_file())
    assert sorted(got) == recorded
    for rel in recorded:
        path = GOLDEN / name / rel
        if isinstance(got[rel], bytes):
            assert got[rel] == path.read_bytes(), rel  # label files and data.yaml: the same bytes
        elif name in WHOLE:  # recorded with the quality signals: the same JSON, all of it
            assert got[rel] == json.loads(path.read_text()), rel
        else:
            assert _without_added(got[rel]) == json.loads(path.read_text()), rel  # COCO: the same JSON
