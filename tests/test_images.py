from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ImageReadError
from pipeline.images import export_image, load_image


def _save(path, array, mode=None, **kw):
    Image.fromarray(array, mode=mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)
    return path


@pytest.mark.parametrize(
    "make, expected_pixel",
    [
        # 8-bit gray: value replicated to RGB
        (lambda p: _save(p / "g.png", np.full((4, 5), 77, np.uint8)), (77, 77, 77)),
        # RGBA: alpha dropped, colour kept
        (
            lambda p: _save(p / "a.png", np.dstack([np.full((4, 5, 3), 200, np.uint8), np.zeros((4, 5), np.uint8)])),
            (200, 200, 200),
        ),
        # 16-bit gray: scaled (65535 -> 255), not clipped
        (lambda p: _save(p / "16.png", np.full((4, 5), 32896, np.uint16)), (128, 128, 128)),
        # palette image
        (
            lambda p: (
                Image.fromarray(np.full((4, 5, 3), (10, 20, 30), np.uint8)).quantize(4).save(p / "p.png") or p / "p.png"
            ),
            (10, 20, 30),
        ),
    ],
)
def test_modes_become_rgb_uint8(tmp_path, make, expected_pixel):
    image = load_image(make(tmp_path))
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (4, 5, 3)
    assert tuple(image.rgb[0, 0]) == expected_pixel
    assert not image.rotated


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    image = load_image(path)
    assert image.rgb.shape == (4, 6, 3)
    r, g, b = image.rgb[1, 1].astype(int)
    assert r > 200 and g < 60 and b < 60


def _exif_rotated(path, orientation=6):
    im = np.zeros((20, 40, 3), np.uint8)
    im[:5, :10] = 255  # bright block top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(im).save(path, exif=exif.tobytes(), quality=100)
    return path


def test_exif_orientation_applied_once_and_exported_upright(tmp_path):
    src = _exif_rotated(tmp_path / "rot.jpg")  # 6 = rotate 90 degrees clockwise for display
    image = load_image(src)
    assert image.rotated and image.hw == (40, 20)
    assert image.rgb[:10, -5:].mean() > 200  # the block is now top-right
    export_image(src, image, tmp_path / "out.jpg")
    again = load_image(tmp_path / "out.jpg")
    assert not again.rotated and again.hw == (40, 20)  # upright pixels, no orientation tag left
    assert np.abs(again.rgb.astype(int) - image.rgb.astype(int)).mean() < 3


def test_upright_image_bytes_copied_untouched(tmp_path):
    src = _save(tmp_path / "x.jpg", np.full((8, 8, 3), 99, np.uint8), quality=70)
    export_image(src, load_image(src), tmp_path / "copy.jpg")
    assert (tmp_path / "copy.jpg").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"hello, not an image"],
    ids=["zero-byte", "truncated", "text"],
)
def test_unreadable_files_raise_clear_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.jpg: not a readable image"):
        load_image(path)


def test_truncated_real_jpeg(tmp_path):
    path = _save(tmp_path / "t.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError):
        load_image(path)


def test_invalid_exif_orientation_means_upright(tmp_path):
    src = _exif_rotated(tmp_path / "zero.jpg", orientation=0)
    image = load_image(src)
    assert not image.rotated and image.hw == (20, 40)
    export_image(src, image, tmp_path / "copy.jpg")
    assert (tmp_path / "copy.jpg").read_bytes() == src.read_bytes()


def test_large_image_below_our_limit_is_read(tmp_path, monkeypatch):
    """Pillow's 89.5-megapixel warning must not refuse images under MAX_PIXELS."""
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # pretend this small image is over Pillow's limit
    src = _save(tmp_path / "big.png", np.zeros((40, 40, 3), np.uint8))
    assert load_image(src).hw == (40, 40)
