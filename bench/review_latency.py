"""How fast `samlabel review` answers a click, and how long a save takes.

    python bench/review_latency.py                    # MobileSAM, 640x480, CPU: torch and ONNX Runtime
    python bench/review_latency.py --runtimes onnx --device cpu --clicks 20 --big 300

Rows, per runtime:
  set_image    the image-encoder pass when an image is opened (once per image, then cached)
  predict      SamSession.predict for one click after that: box + all clicks so far + the previous mask's
               low-res logits (SAM's interactive loop); the first click asks for 3 candidates, later ones for 1
  api predict  the same click through the app (TestClient in-process: JSON, RLE of every candidate, HTTP stack)
and for the dataset: one save (journal append, label file, COCO file of the split, report.json) on the bench
dataset and on a --big one (the first save in a split reads it; later ones copy the kept JSON).
Each row gives wall time and the process's CPU time: on a shared machine the first grows with the others'
load, the second is the work itself.

The checkpoint is the real MobileSAM architecture with random weights (tests/checkpoints.py, not rigged when
the plain builder is there): speed and shapes are real, masks are not meaningful. Needs the SAM prompt API
(pipeline.sam).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    """CPU model and core count, from /proc/cpuinfo where there is one."""
    import os
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPUs"


def _checkpoint(path: Path) -> tuple[Path, str]:
    import tests.checkpoints as ck

    if hasattr(ck, "make_plain_sam_checkpoint"):
        return ck.make_plain_sam_checkpoint(path), "plain random weights"
    return ck.make_sam_checkpoint(path), "rigged random weights (whole-image masks)"


def _photos(folder: Path, n: int, hw=(480, 640)) -> Path:
    from tests.conftest import draw_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        discs = [
            (int(rng.integers(60, hw[1] - 60)), int(rng.integers(60, hw[0] - 60)), int(rng.integers(20, 55)))
            for _ in range(5)
        ]
        Image.fromarray(draw_scene(hw=hw, discs=discs)).save(folder / f"img_{i:04d}.png")
    return folder


def _dataset(work: Path, name: str, n: int, hw) -> Path:
    import pipeline
    from tests.conftest import FakeDetector, FakeSegmenter

    out = work / name
    pipeline.label(
        _photos(work / f"{name}-photos", n, hw),
        out,
        detector=FakeDetector(),
        segmenter=FakeSegmenter(),
        progress=False,
        split="train=1",
    )
    return out


def _stats(seconds: list[float], cpu: list[float] | None = None) -> str:
    """Median and p90 wall time; with ``cpu``, the median CPU time of this process too (all its threads).

    On a shared machine the wall time grows with the others' load; the CPU time is the work itself: on an idle
    machine a call takes between CPU time / threads and CPU time.
    """
    ms = sorted(1000 * s for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    out = f"median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms"
    if cpu:
        out += f"   cpu {statistics.median(1000 * c for c in cpu):7.1f} ms"
    return out + f"   (n={len(ms)})"


class _Timer:
    """Wall and CPU seconds of a block, appended to two lists."""

    def __init__(self, wall: list[float], cpu: list[float]) -> None:
        self.wall, self.cpu = wall, cpu

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.wall.append(time.perf_counter() - self.t)
        self.cpu.append(time.process_time() - self.c)


def _clicks(rng, box, n):
    x0, y0, x1, y1 = box
    return [[float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)), int(k % 3 != 2)] for k in range(n)]


def bench_runtime(runtime: str, args, ckpt: Path, work: Path, out: Path) -> None:
    from pipeline.review.sam import SamSession
    from pipeline.review.server import create_app
    from pipeline.review.store import ReviewStore

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2")
        from fastapi.testclient import TestClient

    t = time.perf_counter()
    session = SamSession.load(ckpt, runtime=runtime, device=args.device, cache_dir=work / "onnx-cache")
    print(f"\n[{runtime}] model ready in {time.perf_counter() - t:.1f} s (runtime in use: {session.segmenter.runtime})")
    rgb = np.asarray(Image.open(next((out.parent / "ds-photos").glob("*.png"))).convert("RGB"))
    embeds, cpu = [], []
    for k in range(3):
        with _Timer(embeds, cpu):
            session.embed(f"warm{k}", rgb)
    print(f"  set_image    {_stats(embeds[1:], cpu[1:])}   ({rgb.shape[1]}x{rgb.shape[0]})")

    rng = np.random.default_rng(1)
    box = np.array([200, 150, 420, 330], np.float32)
    times, cpu, logits = [], [], None
    for k in range(args.clicks):
        pts = np.array(_clicks(rng, box, k % 5 + 1))
        with _Timer(times, cpu):
            cands = session.predict(
                "warm0",
                box=box,
                points=pts[:, :2],
                point_labels=pts[:, 2].astype(int),
                mask_input=logits,
                multimask=len(pts) == 1,
            )
        logits = cands[int(np.argmax([c.score for c in cands]))].logits if len(pts) < 5 else None
    print(f"  predict      {_stats(times[1:], cpu[1:])}")

    client = TestClient(
        create_app(ReviewStore(out), token="bench-token-0123456789", sam=session),
        headers={"authorization": "Bearer bench-token-0123456789"},
    )
    iid = client.get("/api/images").json()[0]["id"]
    image = client.get(f"/api/images/{iid}").json()
    inst = image["instances"][0]
    client.post(f"/api/images/{iid}/predict", json={"box": inst["box"]})  # waits for the embedding
    times, cpu, mask = [], [], None
    for k in range(args.clicks):
        body = {"box": inst["box"], "points": _clicks(rng, inst["box"], k % 5 + 1)}
        if mask is not None:
            body["mask"] = mask
        with _Timer(times, cpu):
            r = client.post(f"/api/images/{iid}/predict", json=body)
        mask = r.json()["rle"] if k % 5 != 4 else None
    print(f"  api predict  {_stats(times[1:], cpu[1:])}")


def bench_saves(out: Path, label: str, n: int = 5) -> None:
    from pipeline.review.store import InstanceEdit, ReviewStore

    store = ReviewStore(out)
    queue = store.images()
    times, cpu = [], []
    for k in range(n):
        iid = queue[k % len(queue)]["id"]
        image = store.image(iid)
        names = store.names
        edits = [
            InstanceEdit(i["id"], names[(i["class_id"] + 1) % len(names)] if j == 0 else i["class"], i["rle"])
            for j, i in enumerate(image["instances"])
        ]
        with _Timer(times, cpu):
            store.save(iid, version=image["version"], reviewed=True, instances=edits)
    print(f"  save ({label:>10})  {_stats(times, cpu)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", default="torch,onnx", help="comma-separated: torch, onnx, auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clicks", type=int, default=16)
    ap.add_argument("--big", type=int, default=300, help="images of the dataset for the second save row (0: skip)")
    args = ap.parse_args()
    try:
        import pipeline.sam  # noqa: F401
    except ImportError:
        sys.exit(
            "bench/review_latency.py needs the SAM prompt API (pipeline.sam): run it where the sam branch is merged"
        )
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"samlabel review latency, {cpu_name()}, device {args.device}, load average {load:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="samlabel-review-bench-") as tmp:
        work = Path(tmp)
        ckpt, kind = _checkpoint(work / "w" / "mobile_sam.pt")
        print(f"MobileSAM, {kind}")
        out = _dataset(work, "ds", 4, (480, 640))
        for runtime in args.runtimes.split(","):
            bench_runtime(runtime.strip(), args, ckpt, work, out)
        print("\nsaves (fake-stage datasets of 640x480 images, 5 objects each, one split, polygon COCO):")
        bench_saves(out, "4 images")
        if args.big:
            bench_saves(_dataset(work, "big", args.big, (480, 640)), f"{args.big} images")


if __name__ == "__main__":
    main()
