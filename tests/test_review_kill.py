"""SIGKILL of the review server in the middle of saves, then a restart: nothing half-saved, nothing lost."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import numpy as np

from pipeline.run.state import Journal
from tests.helpers import assert_valid, check_yolo_matches_coco
from tests.review_helpers import coco_image, coco_marker, journal_lines, make_dataset, start_server, wait_until

#: Seconds each file write of a save is slowed by in the server (so that kills land between them).
DELAY = 0.05

#: Where a round kills the server: right after the pending note (the journal not yet appended), right after
#: the journal append (no file rewritten yet), or in the middle of the COCO rewrite (the label file written,
#: the split's COCO file half written in its temporary file).
KILL_POINTS = ("pending", "journal", "files")


def _state(out: Path, split: str, name: str) -> tuple[list[int], list[int], bool]:
    """(COCO classes, YOLO classes, COCO reviewed) of one image as its files say."""
    img, anns = coco_image(out, split, name)
    lines = (out / split / "labels" / (Path(name).stem + ".txt")).read_text().splitlines()
    return [a["category_id"] - 1 for a in anns], [int(line.split()[0]) for line in lines], bool(img.get("reviewed"))


def test_sigkill_mid_save_then_restart(tmp_path):
    out = make_dataset(tmp_path)
    log = tmp_path / "server.log"
    rng = np.random.default_rng(12)
    marker = coco_marker(log)
    proc, url, token = start_server(out, log, delay=DELAY)
    auth = {"authorization": f"Bearer {token}"}
    try:
        images = [q for q in httpx.get(f"{url}/api/images", headers=auth).json() if q["instances"]]
        outcomes = []
        for round_ in range(6):
            point = KILL_POINTS[round_ % 3]
            q = images[round_ % len(images)]
            image = httpx.get(f"{url}/api/images/{q['id']}", headers=auth).json()
            old = _state(out, q["split"], q["file_name"])
            classes = [(i["class_id"] + 1) % 3 if k == 0 else i["class_id"] for k, i in enumerate(image["instances"])]
            names = ["ball", "cube", "cone"]
            body = {
                "version": image["version"],
                "reviewed": not image["reviewed"],
                "instances": [
                    {"id": i["id"], "class": names[c], "rle": i["rle"]}
                    for i, c in zip(image["instances"], classes, strict=True)
                ],
            }
            lines = journal_lines(out)
            pending = out / ".samlabel" / "review-pending.json"

            def put(body=body, url=url, iid=q["id"], auth=auth):
                try:
                    httpx.put(f"{url}/api/images/{iid}", headers=auth, json=body, timeout=30)
                except httpx.HTTPError:
                    pass  # the server was killed under it

            sender = threading.Thread(target=put)
            sender.start()
            if point == "pending":
                assert wait_until(pending.exists)
            elif point == "journal":
                assert wait_until(lambda lines=lines: journal_lines(out) > lines)
            else:
                assert wait_until(marker.exists)  # the COCO rewrite has begun
                threading.Event().wait(float(rng.uniform(0, DELAY / 2)))
            proc.kill()
            proc.wait()
            sender.join()
            committed = journal_lines(out) > lines
            inside_coco = marker.exists()
            if point == "files":  # the split's COCO file was half written in its temporary file
                assert list(out.rglob("._annotations.coco.json.*.tmp")), "the kill missed the COCO rewrite"
            marker.unlink(missing_ok=True)
            outcomes.append((point, committed, inside_coco))
            proc, url, token = start_server(out, log, delay=DELAY)  # the restart finishes an interrupted save
            auth = {"authorization": f"Bearer {token}"}
            assert not pending.exists()
            assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.anns"))  # killed writes: cleared on open
            assert_valid(out)
            check_yolo_matches_coco(out)
            new = (classes, classes, body["reviewed"])
            assert _state(out, q["split"], q["file_name"]) == (new if committed else old), (point, committed)
            again = httpx.get(f"{url}/api/images/{q['id']}", headers=auth).json()
            assert again["version"] == image["version"] + committed
            newest = {r.rel: r for _, r in Journal(out).records()}
            report = json.loads((out / "report.json").read_text())
            assert report["reviewed_images"] == sum(r.reviewed for r in newest.values())
        print("kill outcomes (point, committed, inside the COCO rewrite):", outcomes)
        assert {p for p, c, _ in outcomes if c} >= {"journal", "files"}  # the kills landed where meant
        assert all(inside for p, _, inside in outcomes if p == "files")
        assert not any(inside for p, _, inside in outcomes if p != "files")
    finally:
        proc.terminate()  # a clean stop: report.html is rebuilt
        rc = proc.wait(timeout=60)
    assert rc == 0, log.read_text()
    assert (out / "report.html").is_file() and not (out / ".samlabel" / "review-report-stale").exists()
    assert_valid(out)
