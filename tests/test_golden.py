"""The datasets written today equal those recorded before the architecture change, file for file."""

from __future__ import annotations

import json

import pytest

from tests.golden_cases import CASES, GOLDEN, dataset_files, run_case


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
        else:
            assert got[rel] == json.loads(path.read_text()), rel  # COCO: the same JSON
