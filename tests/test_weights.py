"""Missing weights: the error names the option the way the caller gave it (Python argument or CLI flag)."""

from __future__ import annotations

import pytest

from pipeline import convert, label
from pipeline.cli import main
from pipeline.errors import WeightsNotFoundError
from pipeline.weights import resolve_weights
from tests.conftest import FakeSegmenter
from tests.roboflow import roboflow_yolo


def test_resolve_weights_words_the_error_for_python_and_for_the_cli():
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights("missing/dir/best.pt", flag="--detector")
    assert str(e.value) == (
        "detector='missing/dir/best.pt': no such file; give the path of a weights file with detector='PATH'"
    )
    assert e.value.cli_message == (
        "--detector missing/dir/best.pt: no such file; give the path of a weights file with --detector PATH"
    )


def test_python_label_names_the_detector_argument(tmp_path, image_folder):
    with pytest.raises(WeightsNotFoundError, match=r"^detector='missing/best.pt': .*detector='PATH'$") as e:
        label(image_folder, tmp_path / "o", detector="missing/best.pt", segmenter=FakeSegmenter(), progress=False)
    assert "--detector" not in str(e.value)


def test_python_convert_names_the_segmenter_argument(tmp_path):
    """A box dataset needs SAM: missing SAM weights are refused before the run, named as ``segmenter=``."""
    with pytest.raises(WeightsNotFoundError, match=r"^segmenter='missing/mobile_sam.pt': .*segmenter='PATH'$") as e:
        convert(roboflow_yolo(tmp_path / "src"), tmp_path / "o", segmenter="missing/mobile_sam.pt", progress=False)
    assert "--segmenter" not in str(e.value)


def test_cli_names_the_flag(tmp_path, image_folder, capsys):
    assert main(["label", str(image_folder), "--out", str(tmp_path / "o"), "--detector", "missing/best.pt"]) == 2
    err = capsys.readouterr().err
    assert (
        "samlabel: error: --detector missing/best.pt: no such file; give the path of a weights file with "
        "--detector PATH" in err
    )
    assert "detector='" not in err


def test_a_name_downloaded_before_is_found_where_ultralytics_keeps_it_without_importing_it(tmp_path):
    """``mobile_sam.pt`` given by name, already in Ultralytics' weights folder: found there from Ultralytics' settings
    file, with neither Ultralytics nor PyTorch imported; and it is the folder Ultralytics itself reads."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    weights = tmp_path / "my-weights"  # not Ultralytics' default (the working folder's "weights")
    weights.mkdir()
    (weights / "mobile_sam.pt").write_bytes(b"weights")
    (tmp_path / "cfg" / "Ultralytics").mkdir(parents=True)
    settings = {"settings_version": "0.0.8", "weights_dir": str(weights)}
    (tmp_path / "cfg" / "Ultralytics" / "settings.json").write_text(json.dumps(settings))
    script = (
        "import json, sys\n"
        "from pipeline.weights import resolve_weights\n"
        "found = str(resolve_weights('mobile_sam.pt', flag='--segmenter'))\n"
        "clean = 'ultralytics' not in sys.modules and 'torch' not in sys.modules\n"
        "from pipeline.weights import ultralytics_weights_dir\n"
        "print(json.dumps([found, clean, str(ultralytics_weights_dir())]))\n"
    )
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "cfg")}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    found, clean, ultralytics_dir = json.loads(out.stdout.strip().splitlines()[-1])
    assert (found, clean, ultralytics_dir) == (str(weights / "mobile_sam.pt"), True, str(weights))
    assert Path(found).read_bytes() == b"weights"
