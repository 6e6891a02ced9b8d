"""Throughput of samlabel against Ultralytics' own tools, on the same images, checkpoints and device.

    python bench/throughput.py                       # 16 images of 640x480, 5 boxes each, MobileSAM, CPU
    python bench/throughput.py --sam sam_b --device 0
    python bench/throughput.py --convert-only --repeats 3 --masks-vs d82c73f   # issue 24's "done when" run

Rows:
  convert  samlabel convert (CLI, each runtime)     vs ultralytics.data.converter.yolo_bbox2segment
  label    samlabel label   (each runtime)          vs ultralytics.data.annotator.auto_annotate
``convert`` runs both tools as fresh processes (``python -m pipeline.cli convert`` and a ``python -c`` that calls
``yolo_bbox2segment``), side by side: one warm-up run of each (it also builds the cached ONNX export), then
``--repeats`` rounds that alternate the two, so both see the same load; each time is process start to exit,
and the best and the median of the rounds are printed. ``label`` runs in this process (best of two after a
warm-up). The checkpoints are the real architectures with random weights (see tests/checkpoints.py): speed
and shapes are real, masks are not meaningful.

Per stage (samlabel convert, first runtime): seconds per image and the share of the model work, where the
model work is the encoder, the decoder and the upsampling of the masks, timed on the ``Segmenter`` in this
process (best of ``--repeats`` passes); the SAM stage, reading and writing come from the CLI runs' report.json
(``stage_seconds``); start-up is process start to the first image (its journal line, less one image's
steady time) and after the last image to exit.

``--masks-vs REF`` first checks that this tree's SAM stage gives exactly the masks, scores and stability
scores of git revision REF on the same machine, images and checkpoints (``bench/mask_check.py``), and
stops with an error when they differ.

Agreement with the PyTorch reference (Ultralytics' SAM predictor, same boxes): max abs difference
of the low-resolution mask logits and of the scores, and mask IoU where masks are non-empty, on a
plain random-weight checkpoint (not rigged), so the logits vary across the image.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The caller's OMP_NUM_THREADS, read before anything imports Ultralytics: importing it sets OMP_NUM_THREADS=1 in
# this process, and the tools run below must start from the shell's environment, as a user's would.
USER_OMP = os.environ.get("OMP_NUM_THREADS")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _models import ROOT, make_sam_checkpoint, make_yolo_checkpoint  # noqa: E402
from PIL import Image  # noqa: E402

ENCODER_GFLOP = {"mobile_sam": 77.5}  # per 1024x1024 input, the measurement


def cpu_peak_gflops() -> float:
    """This machine's float32 matmul rate with the threads the pipeline uses (best of 2048^3 and 4096^3)."""
    from pipeline.threads import torch_threads

    best = 0.0
    with torch_threads():
        for n in (2048, 4096):
            a, b = torch.randn(n, n), torch.randn(n, n)
            a @ b
            best = max(best, 2 * n**3 / timed(lambda a=a, b=b: a @ b, 3) / 1e9)
    return best


def cpu_name() -> str:
    """CPU model and widest vector unit, from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({isa})"


def make_images(root: Path, n: int, boxes: int, seed: int = 0) -> None:
    """n photos-like images (smooth noise) with YOLO box labels: images/ + labels/ + classes.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(root / "images" / f"im_{i:03d}.jpg", quality=90)
        lines = []
        for _ in range(boxes):
            w, h = rng.uniform(0.1, 0.4, 2)
            x, y = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            lines.append(f"0 {x:.5f} {y:.5f} {w:.5f} {h:.5f}")
        (root / "labels" / f"im_{i:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("thing\n")


def label_boxes(data: Path, image: Path) -> np.ndarray:
    """The YOLO boxes of one ``make_images`` image as (N, 4) xyxy pixels."""
    lines = np.loadtxt(data / "labels" / (image.stem + ".txt"), ndmin=2)[:, 1:]
    return np.hstack([lines[:, :2] - lines[:, 2:] / 2, lines[:, :2] + lines[:, 2:] / 2]) * [640, 480, 640, 480]


def timed(fn, repeats: int = 2) -> float:
    """Best of ``repeats`` runs (the machine is shared; the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _env() -> dict[str, str]:
    """This process's environment with this tree first on PYTHONPATH (the CLI runs import this ``pipeline``)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # as the user's shell has it (see USER_OMP), not as Ultralytics left it here
    if USER_OMP is not None:
        env["OMP_NUM_THREADS"] = USER_OMP
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def convert_command(data: Path, out: Path, sam: Path, device: str, runtime: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "convert", str(data), "--out", str(out), "--segmenter", str(sam),
            "--device", device, "--runtime", runtime, "--quiet"]  # fmt: skip


def bbox2segment_command(data: Path, out: Path, sam: Path, device: str) -> list[str]:
    code = (
        "import sys\nfrom ultralytics.data.converter import yolo_bbox2segment\n"
        "yolo_bbox2segment(sys.argv[1], save_dir=sys.argv[2], sam_model=sys.argv[3], device=sys.argv[4])"
    )
    return [sys.executable, "-c", code, str(data / "images"), str(out), str(sam), device]


def run_process(command: list[str], out: Path, *, journal: Path | None = None, images: int = 0) -> dict:
    """Run ``command`` (a fresh process) and time it: ``seconds`` from start to exit; with ``journal``, also when
    its first and its ``images``-th line appeared (``first``, ``last``, seconds after the start)."""
    shutil.rmtree(out, ignore_errors=True)
    for cache in out.parent.glob("**/labels/*.cache"):  # Ultralytics' label cache: each run starts cold
        cache.unlink()
    times: dict = {}
    t0 = time.perf_counter()
    # cwd: ``python -m`` puts it first on sys.path, so a ``pipeline`` folder where the bench was started wins
    proc = subprocess.Popen(command, env=_env(), cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None:
        if journal is not None and "last" not in times:
            try:
                lines = journal.read_bytes().count(b"\n")
            except OSError:
                lines = 0
            now = time.perf_counter() - t0
            if lines >= 1:
                times.setdefault("first", now)
            if lines >= images:
                times["last"] = now
        time.sleep(0.01)
    times["seconds"] = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return times


def side_by_side(data: Path, work: Path, sam: Path, device: str, runtimes: list[str], n: int, repeats: int) -> dict:
    """``yolo_bbox2segment`` and ``samlabel convert`` (each runtime) as fresh processes: one warm-up each, then
    ``repeats`` rounds in turn. Returns ``{tool: [run, ...]}`` (see :func:`run_process`; samlabel runs add
    ``stage_seconds`` from their report.json)."""
    out = work / "side"
    tools = {"ultralytics yolo_bbox2segment": lambda: run_process(bbox2segment_command(data, out, sam, device), out)}
    for r in runtimes:

        def samlabel(r=r):
            journal = out / ".samlabel" / "journal.jsonl"
            run = run_process(convert_command(data, out, sam, device, r), out, journal=journal, images=n)
            report = json.loads((out / "report.json").read_text())
            return {**run, "stage_seconds": report["timings"]["this_run"]["stage_seconds"]}

        tools[f"samlabel convert --runtime {r}"] = samlabel
    runs: dict[str, list[dict]] = {tool: [] for tool in tools}
    for fn in tools.values():
        fn()  # warm-up: ONNX export, file cache, Python's bytecode cache
    for _ in range(repeats):
        for tool, fn in tools.items():
            runs[tool].append(fn())
    return runs


def startup(run: dict, n: int) -> tuple[float, float, float]:
    """(process start to first image, one image in steady state, last image to exit) of one samlabel run."""
    steady = (run["last"] - run["first"]) / max(n - 1, 1)
    return run["first"] - steady, steady, run["seconds"] - run["last"]


def run_label(data: Path, out: Path, sam: Path, device: str, runtime: str, det: Path, boxes: int) -> None:
    from pipeline import label

    label(
        data / "images",
        out,
        detector=str(det),
        segmenter=str(sam),
        device=device,
        runtime=runtime,
        max_det=boxes,
        progress=False,
    )


def run_auto_annotate(data: Path, out: Path, sam: Path, device: str, det: Path, boxes: int, **_) -> None:
    from ultralytics.data.annotator import auto_annotate

    auto_annotate(
        data=str(data / "images"),
        det_model=str(det),
        sam_model=str(sam),
        device=device,
        max_det=boxes,
        output_dir=str(out),
    )


def measure(run, data: Path, work: Path, **kwargs) -> float:
    """Best-of-two end-to-end seconds of ``run`` on ``data``, after one warm-up run (it builds the ONNX
    cache and loads the libraries)."""
    out = work / "out"

    def once() -> None:
        shutil.rmtree(out, ignore_errors=True)
        run(data, out, **kwargs)

    once()
    return timed(once)


def encoder_seconds(sam: Path, device: str, runtime: str, repeats: int = 3) -> float:
    from pipeline.sam import Segmenter

    seg = Segmenter(str(sam), device=device, runtime=runtime)
    rgb = np.zeros((480, 640, 3), np.uint8)
    seg.set_image(rgb)
    return timed(lambda: seg.set_image(rgb), repeats)


def model_work(sam: Path, data: Path, device: str, runtime: str, repeats: int) -> dict[str, float]:
    """Seconds per image of the model work of the SAM stage, timed on the ``Segmenter`` (best of ``repeats``
    passes over the images): encoder input (letterbox, normalization), encoder, decoder (all boxes), and the
    upsampling of each mask to the image."""
    from pipeline.images import load_image
    from pipeline.sam import Segmenter
    from pipeline.threads import torch_threads

    seg = Segmenter(str(sam), device=device, runtime=runtime)
    paths = sorted((data / "images").iterdir())
    images = [(load_image(p).rgb, label_boxes(data, p)) for p in paths]
    best = {"encoder input": float("inf"), "encoder": float("inf"), "decoder": float("inf"), "upsampling": float("inf")}
    for _ in range(repeats):
        parts = dict.fromkeys(best, 0.0)
        for rgb, xyxy in images:
            with torch.inference_mode(), torch_threads():
                t0 = time.perf_counter()
                x = seg.reference.preprocess(rgb)
                t1 = time.perf_counter()
                seg.backend.encode(x)
                t2 = time.perf_counter()
            embedding = seg.set_image(rgb)  # (timed above in two parts)
            t3 = time.perf_counter()
            pred = seg.predict(embedding, boxes=xyxy)
            t4 = time.perf_counter()
            pred.masks()
            t5 = time.perf_counter()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t4 - t3, t5 - t4), strict=True):
                parts[key] += dt / len(images)
        best = {k: min(best[k], parts[k]) for k in best}
    return best


def agreement(sam_plain: Path, data: Path, device: str, runtime: str) -> tuple[float, float, float]:
    """(max |logit diff|, max |score diff|, min IoU of non-empty masks) of ``runtime`` vs PyTorch."""
    from pipeline.images import load_image
    from pipeline.sam import Segmenter

    ref, fast = (Segmenter(str(sam_plain), device=device, runtime=r) for r in ("torch", runtime))
    d_logit = d_score = 0.0
    ious = []
    for img_path in sorted((data / "images").iterdir())[:3]:
        rgb = load_image(img_path).rgb
        hw = rgb.shape[:2]
        xyxy = label_boxes(data, img_path)
        p1, p2 = (s.predict(s.set_image(rgb), boxes=xyxy) for s in (ref, fast))
        d_logit = max(d_logit, (p1.logits - p2.logits).abs().max().item())
        d_score = max(d_score, float(np.abs(p1.scores - p2.scores).max()))
        for a, b in zip(p1.masks(), p2.masks(), strict=True):
            ma, mb = a.full(hw), b.full(hw)
            if ma.any() or mb.any():
                ious.append(np.logical_and(ma, mb).sum() / np.logical_or(ma, mb).sum())
    return d_logit, d_score, (min(ious) if ious else float("nan"))


def masks_versus(ref: str, data: Path, rigged: Path, plain: Path, work: Path) -> int:
    """Digests of the SAM stage's masks with this tree and with git revision ``ref`` (``bench/mask_check.py``);
    raises SystemExit listing the differences. Returns how many (config, image) pairs were compared."""
    old = work / "ref-tree"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "pipeline"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--masks-vs {ref}: git archive failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    digests = []
    for tree in (ROOT, old):
        env = {**_env(), "PYTHONPATH": str(tree), "SAMLABEL_CACHE_DIR": str(work / f"cache-{tree.name}")}
        command = [sys.executable, str(ROOT / "bench" / "mask_check.py"), str(data), str(rigged), str(plain)]
        done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"mask check with {tree} failed:\n{done.stderr[-3000:]}")
        digests.append(json.loads(done.stdout))
    mine, theirs = digests
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise SystemExit(f"masks differ from {ref} in {len(differ)} of {len(mine)} (config, image): {differ[:5]}")
    return len(mine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--boxes", type=int, default=5)
    ap.add_argument("--sam", default="mobile_sam", help="architecture: mobile_sam, sam_b, sam2_t ...")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runtimes", default="auto,torch", help="samlabel runtimes; the first is profiled [auto,torch]")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the side-by-side runs and profile passes [2]")
    ap.add_argument("--convert-only", action="store_true", help="only the convert rows (no label, no agreement)")
    ap.add_argument("--skip-label", action="store_true")
    ap.add_argument("--masks-vs", metavar="REF", help="first check that the masks equal git revision REF's")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runtimes = args.runtimes.split(",")
    n = args.images
    with tempfile.TemporaryDirectory() as wd:
        work = Path(wd)
        os.environ["SAMLABEL_CACHE_DIR"] = str(work / "onnx-cache")  # exports made here, not in the user's cache
        det = make_yolo_checkpoint(work / "w" / "det.pt", ["thing"])
        sam = make_sam_checkpoint(work / "w" / f"{args.sam}.pt")  # rigged: every box gets a mask
        plain = work / "plain" / f"{args.sam}.pt"
        plain.parent.mkdir()
        from ultralytics.models.sam import build as sam_build

        torch.manual_seed(0)
        torch.save(getattr(sam_build, f"build_{args.sam.replace('.', '_')}")().state_dict(), plain)
        data = work / "data"
        make_images(data, n, args.boxes)
        checked = masks_versus(args.masks_vs, data, sam, plain, work) if args.masks_vs else 0

        runs = side_by_side(data, work, sam, args.device, runtimes, n, args.repeats)
        rows = [("convert", tool, [r["seconds"] for r in rs]) for tool, rs in runs.items()]
        common = dict(sam=sam, device=args.device, det=det, boxes=args.boxes, work=work)
        if not (args.skip_label or args.convert_only):
            rows.append(("label", "ultralytics auto_annotate", [measure(run_auto_annotate, data, **common)]))
            for r in runtimes:
                seconds = measure(run_label, data, runtime=r, **common)
                rows.append(("label", f"samlabel label --runtime {r}", [seconds]))
        model = model_work(sam, data, args.device, runtimes[0], args.repeats)
        if not args.convert_only:
            enc = {r: encoder_seconds(sam, args.device, r) for r in runtimes}
            agree = {r: agreement(plain, data, args.device, r) for r in runtimes}
        peak = cpu_peak_gflops() if args.device == "cpu" else None

    print(
        f"\nmachine: {cpu_name()}, {os.cpu_count()} CPUs, device {args.device}"
        + (f" (float32 matmul peak {peak:.0f} GFLOP/s)" if peak else "")
        + f"; {args.sam}; {n} images 640x480, {args.boxes} boxes each; load average {os.getloadavg()[0]:.1f}\n"
    )
    if checked:
        print(f"masks: identical to {args.masks_vs}'s in all {checked} (config, image) pairs (bench/mask_check.py)\n")
    print("| job | tool | s per run (each round) | images/s (best) | speed-up (best) | speed-up (median) |")
    print("|---|---|---|---:|---:|---:|")
    base: dict[str, tuple[float, float]] = {}
    for job, tool, seconds in rows:
        best, median = min(seconds), statistics.median(seconds)
        b_best, b_median = base.setdefault(job, (best, median))
        print(f"| {job} | {tool} | {', '.join(f'{t:.1f}' for t in seconds)} | {n / best:.3f} | "
              f"{b_best / best:.2f}x | {b_median / median:.2f}x |")  # fmt: skip
    if not args.convert_only:
        print("\n| runtime | encoder s/image | % of CPU FLOP limit | max abs logit diff | max abs score diff | "
              "min mask IoU |\n|---|---:|---:|---:|---:|---:|")  # fmt: skip
        for r in runtimes:
            gflop = ENCODER_GFLOP.get(args.sam)
            frac = f"{100 * gflop / enc[r] / peak:.0f}%" if gflop and peak else "n/a"
            dl, ds, iou = agree[r]
            print(f"| {r} | {enc[r]:.3f} | {frac} | {dl:.2e} | {ds:.2e} | {iou:.4f} |")
    print_stages(model, runs[f"samlabel convert --runtime {runtimes[0]}"], n, runtimes[0])


def print_stages(model: dict[str, float], runs: list[dict], n: int, runtime: str) -> None:
    """Per stage, seconds per image (best of the runs) and the share of the model work; start-up."""
    work = model["encoder"] + model["decoder"] + model["upsampling"]
    stages = {k: min(r["stage_seconds"].get(k, 0.0) for r in runs) for k in ("load", "read", "segment", "write")}
    starts = [startup(r, n) for r in runs]
    print(f"\nwhere the time goes (samlabel convert --runtime {runtime}; best of {len(runs)} runs):\n")
    print("| part | s/image | share of model work |\n|---|---:|---:|")
    for part in ("encoder", "decoder", "upsampling"):
        print(f"| model: {part} | {model[part]:.3f} | {model[part] / work:.0%} |")
    print(f"| **model work** | {work:.3f} | 100% |")
    print(f"| (encoder input: letterbox + normalize, inside the SAM stage) | {model['encoder input']:.3f} | "
          f"{model['encoder input'] / work:.0%} |")  # fmt: skip
    print(f"| **SAM stage** (report.json segment) | {stages['segment'] / n:.3f} | {stages['segment'] / n / work:.0%} |")
    print(f"| read (in a thread) | {stages['read'] / n:.3f} | {stages['read'] / n / work:.0%} |")
    print(
        f"| quality + polygons + files (in a thread) | {stages['write'] / n:.3f} | {stages['write'] / n / work:.0%} |"
    )
    steady = min(s[1] for s in starts)
    print(f"| one image, end to end, steady state | {steady:.3f} | {steady / work:.0%} |")
    print("\n| start-up | seconds |\n|---|---:|")
    print(f"| process start to the first image (of which loading SAM: {stages['load']:.2f}) | "
          f"{min(s[0] for s in starts):.2f} |")  # fmt: skip
    print(f"| after the last image to exit (COCO, report.json, report.html) | {min(s[2] for s in starts):.2f} |")


if __name__ == "__main__":
    main()
