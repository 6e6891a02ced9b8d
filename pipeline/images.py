"""Decode one image safely: EXIF orientation applied once, any mode converted to RGB uint8."""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline import fsio
from pipeline.errors import ImageReadError

#: File extensions read as images (lower case). All of them are also read by Ultralytics' loaders.
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})

#: Decompression-bomb guard: images above this many pixels are refused rather than decoded
#: (Pillow itself refuses anything above twice its 89.5-megapixel warning limit).
MAX_PIXELS = 178_000_000

#: Smallest image side a dataset keeps: Ultralytics' loader drops smaller images (and their labels) as corrupt.
MIN_SIDE = 10

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedImage:
    """An upright image ready for the models.

    Attributes:
        rgb: uint8 array (H, W, 3), EXIF orientation already applied.
        rotated: True when EXIF orientation changed the pixels, so the source bytes are not upright.
        format: PIL format name of the source, e.g. ``"JPEG"``.
    """

    rgb: np.ndarray
    rotated: bool
    format: str

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the upright image."""
        return self.rgb.shape[0], self.rgb.shape[1]


def load_image(path: Path) -> LoadedImage:
    """Read an image file, apply EXIF orientation and convert to RGB uint8.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK, 16-bit and float images are converted;
    16-bit values are scaled to 8 bits rather than clipped.

    Raises:
        ImageReadError: the file is empty, truncated, not an image, or too large.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            with _pil_open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageReadError(f"{path}: {im.width}x{im.height} exceeds {MAX_PIXELS} pixels")
                fmt = im.format or ""
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                rotated = orientation in (2, 3, 4, 5, 6, 7, 8)  # 0 or junk values mean "no rotation"
                im.load()
                upright = ImageOps.exif_transpose(im) if rotated else im
                rgb = _to_rgb(upright)
    except ImageReadError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{path}: image has no pixels")
    return LoadedImage(rgb=rgb, rotated=rotated, format=fmt)


def upright_hw(path: Path) -> tuple[int, int]:
    """(H, W) of the image after EXIF orientation, from the file header (no pixel decoding).

    Raises:
        OSError, ValueError, SyntaxError, Image.DecompressionBombError: not a readable image header.
    """
    with _pil_open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _pil_open(path: Path) -> Image.Image:
    """``PIL.Image.open``, bypassing Ultralytics' global patch of it.

    Importing Ultralytics replaces ``Image.open`` with a wrapper that, on any unidentified file,
    tries to pip-install a HEIF plugin at run time. An unreadable file must simply be reported here.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    opener = getattr(patches, "_image_open", Image.open) if patches is not None else Image.open
    return opener(path)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if im.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        elif arr.max() > 255:  # 16-bit range (also PNG 16-bit gray decoded as mode "I")
            arr = arr.astype(np.float64) / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def export_image(src: Path, image: LoadedImage, dst: Path, *, link: bool = False) -> None:
    """Write the dataset's copy of an image to ``dst``.

    The source bytes are copied untouched (or linked, with ``link``) when they are already upright;
    a rotated image is written upright in its own format (JPEG at quality 95), without the
    orientation tag. Writes are atomic.
    """
    if not image.rotated:
        fsio.link_file(src, dst) if link else fsio.copy_file(src, dst)
        return
    buf = io.BytesIO()
    fmt = {"MPO": "JPEG"}.get(image.format, image.format)  # cameras' JPEGs often open as MPO
    fmt = fmt if fmt in ("JPEG", "PNG", "WEBP", "TIFF", "BMP") else "PNG"
    params = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(image.rgb).save(buf, format=fmt, **params)
    fsio.write_bytes(dst, buf.getvalue())
