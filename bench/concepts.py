"""SAM 3 in concept mode: seconds per image for 1, 5 and 20 phrases, text cost per phrase, memory over images.

    python bench/concepts.py                  # the reduced SAM 3 of the tests (seconds in all)
    python bench/concepts.py --full           # Meta's size (848M parameters, random weights): many minutes on a CPU
    python bench/concepts.py --device 0       # on a GPU

Random weights, so the instance counts mean nothing; the seconds and the memory do (the work per image does not
depend on the weights: every query is decoded and scored whatever it finds). Per image the model encodes the
image once, then runs fusion encoder + decoder + mask head once per phrase (16 phrases per batch); each phrase's
text encoding is computed once per run. Images are 640 x 480 photos of noise with two drawn discs.

Printed: load time; text encoding per phrase (a batch of 20 new phrases, divided by 20, and one phrase alone);
image encoding alone; seconds per image for 1, 5 and 20 phrases (text already cached, as in a run); resident
memory after each image of a stream of images (it must not grow) and the peak (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from _models import ROOT  # noqa: F401 - puts the repository on sys.path

PHRASES = [
    "person", "bicycle", "car", "traffic light", "dog", "solar panel", "forklift", "helmet", "tree", "bus",
    "window", "door", "chair", "bottle", "cup", "lamp", "sign", "wheel", "bag", "roof",
    "cat", "horse", "boat", "bench", "clock",
]  # fmt: skip


def rss_mib() -> float:
    """Resident memory of this process now (Linux /proc), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def image(i: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(i)
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    cv2.circle(rgb, (160 + 10 * i, 200), 60, (250, 250, 250), -1)
    cv2.circle(rgb, (460, 260 - 5 * i), 90, (20, 200, 30), -1)
    return rgb


def load(full: bool, device: str | None, work: Path):
    from pipeline.concepts.sam3 import Sam3Model

    if not full:
        from tests.checkpoints import make_sam3_checkpoint

        return Sam3Model(make_sam3_checkpoint(work / "sam3.pt"), device=device)
    from pipeline.concepts.sam3_build import build_sam3

    # Meta's size with random weights: built in memory (a 3.4 GB file is not needed to time it)
    with mock.patch("pipeline.concepts.sam3.load_sam3", return_value=build_sam3()):
        return Sam3Model("sam3.pt", device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="Meta's size (848M parameters) instead of the reduced one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=None, help="images per phrase count (default 3; --full: 1)")
    parser.add_argument("--stream", type=int, default=None, help="images in the memory stream (default 30; --full: 3)")
    args = parser.parse_args()
    per_count = args.images or (1 if args.full else 3)
    stream = args.stream or (3 if args.full else 30)
    result: dict[str, object] = {"model": "sam3 (848M)" if args.full else "sam3 reduced (tests)", "device": args.device}

    import torch

    from pipeline.threads import torch_threads

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model = load(args.full, args.device, Path(tmp))
        result["load_s"] = round(time.perf_counter() - t, 2)
    params = sum(p.numel() for p in model.model.parameters())
    result["parameters_M"] = round(params / 1e6, 1)
    print(f"{result['model']} on {args.device}: {params / 1e6:.0f}M parameters, loaded in {result['load_s']} s")

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    with torch_threads(), torch.inference_mode():
        t = time.perf_counter()
        model._encode_text(PHRASES[:1])
        sync()
        one = time.perf_counter() - t
        t = time.perf_counter()
        model._encode_text(PHRASES[1:21])
        sync()
        batch = (time.perf_counter() - t) / 20
        model._encode_text(PHRASES)
        t = time.perf_counter()
        model.encode_image(image(0))
        sync()
        encode = time.perf_counter() - t
    result.update(text_one_phrase_s=round(one, 3), text_per_phrase_in_batch_s=round(batch, 3))
    result["image_encoding_s"] = round(encode, 2)
    print(f"text encoding (once per phrase per run): {one:.3f} s alone, {batch:.3f} s each in a batch of 20")
    print(f"image encoding alone: {encode:.2f} s")

    seconds = {}
    for k in (1, 5, 20):
        times = []
        for i in range(per_count):
            t = time.perf_counter()
            model(image(i), PHRASES[:k])
            sync()
            times.append(time.perf_counter() - t)
        seconds[k] = round(float(np.median(times)), 2)
        print(f"{k:>2} phrases: {seconds[k]:.2f} s per image (median of {per_count})")
    result["seconds_per_image"] = seconds

    rss = []
    for i in range(stream):
        model(image(100 + i), PHRASES[: (1 if args.full else 5)])
        rss.append(round(rss_mib()))
    result["stream_rss_mib"] = rss
    result["peak_rss_mib"] = round(peak_mib())
    print(f"resident memory over {stream} images: {rss} MiB (growth after the first: {rss[-1] - rss[0]:+d} MiB)")
    print(f"peak resident memory: {result['peak_rss_mib']} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
