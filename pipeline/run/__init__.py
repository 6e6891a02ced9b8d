"""Running a job: the local loop and its threads (``loop``), the state in ``DIR/.samlabel`` (``state``), each
image's record and files (``outputs``), and the final assembly of data.yaml, COCO and report.json (``report``)."""

from __future__ import annotations

from pipeline.run.loop import RunResult, run_dataset
from pipeline.run.state import check_writable

__all__ = ["RunResult", "check_writable", "run_dataset"]
