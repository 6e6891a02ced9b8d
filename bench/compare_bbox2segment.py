"""What ultralytics' yolo_bbox2segment writes vs what `samlabel convert` writes, same data and checkpoint.

    python bench/compare_bbox2segment.py

Data: a synthetic Roboflow YOLOv8 export (train/valid/test, ../train/images paths, 3 classes; see
tests/roboflow.py). Checkpoints: random-weight MobileSAM rigged so every box gets a whole-image mask
with SAM score 0.9, and the same with score 0.2 (below the 0.25 that Ultralytics' SAM predictor
filters on). Prints what each tool produced.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _models import make_sam_checkpoint  # also puts the repo on sys.path

from tests.roboflow import roboflow_yolo


def count_lines(folder: Path) -> tuple[int, int]:
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    return len(files), sum(len([ln for ln in f.read_text().splitlines() if ln.strip()]) for f in files)


def main() -> None:
    from ultralytics.data.converter import yolo_bbox2segment

    from pipeline import convert

    with tempfile.TemporaryDirectory() as wd:
        work = Path(wd)
        src = roboflow_yolo(work / "src")
        source_boxes = sum(count_lines(src / s / "labels")[1] for s in ("train", "valid", "test"))
        print(f"source: Roboflow YOLOv8 export, 3 splits, 5 images, {source_boxes} boxes, names ball/cube/cone\n")
        for score in (0.9, 0.2):
            sam = make_sam_checkpoint(work / f"s{score}" / "mobile_sam.pt", score=score)
            print(f"== SAM score {score} ==")
            ul_total = 0
            for split in ("train", "valid", "test"):
                out = work / f"ul-{score}-{split}"
                yolo_bbox2segment(str(src / split / "images"), save_dir=str(out), sam_model=str(sam), device="cpu")
                files, lines = count_lines(out)
                ul_total += lines
                print(
                    f"  yolo_bbox2segment {split:5s}: {files} label files, {lines} instances; "
                    f"written: {sorted(p.name for p in out.iterdir())[:3]}..."
                )
            written = sorted(p.name for p in (work / f"ul-{score}-train").iterdir())
            print(
                f"  yolo_bbox2segment total: {ul_total}/{source_boxes} instances; files are label .txt only "
                f"({len(written)}), run once per split folder; no images, no data.yaml, no COCO"
            )
            out = work / f"sl-{score}"
            report = convert(src, out, segmenter=str(sam), device="cpu", runtime="torch", progress=False).report
            coco = {s: json.loads((out / s / "_annotations.coco.json").read_text()) for s in report["images"]}
            n_coco = sum(len(c["annotations"]) for c in coco.values())
            low = sum(1 for c in coco.values() for a in c["annotations"] if a["mask_score"] < 0.25)
            print(
                f"  samlabel convert: splits {report['images']}, {report['instances_total']}/{source_boxes} "
                f"instances in YOLO-seg and {n_coco} in COCO, names {report['names']}, "
                f"{low} with mask_score < 0.25 kept and visible in COCO; data.yaml + images + report.json\n"
            )


if __name__ == "__main__":
    main()
