"""load_image: every accepted input normalises to HxWx3 uint8 RGB; anything else is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from grounded_sam import load_image
from grounded_sam.errors import InputError


def test_rgb_array_passthrough(chelsea):
    out = load_image(chelsea)
    assert out.dtype == np.uint8 and out.shape == chelsea.shape
    assert np.array_equal(out, chelsea)


def test_grayscale_to_rgb(chelsea):
    gray = chelsea[..., 0]
    out = load_image(gray)
    assert out.shape == (*gray.shape, 3)
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)


def test_rgba_drops_alpha(chelsea):
    rgba = np.dstack([chelsea, np.full(chelsea.shape[:2], 7, np.uint8)])
    assert np.array_equal(load_image(rgba), chelsea)
    assert np.array_equal(load_image(Image.fromarray(rgba, "RGBA")), chelsea)


def test_la_pil_drops_alpha(chelsea):
    la = Image.fromarray(chelsea[..., 0]).convert("LA")
    out = load_image(la)
    assert out.shape == (*chelsea.shape[:2], 3)
    assert np.array_equal(out[..., 1], chelsea[..., 0])


def test_16bit_scaled(tmp_path):
    arr = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    out = load_image(arr)
    assert out.dtype == np.uint8
    assert np.array_equal(out[..., 0], np.round(arr / 257.0).astype(np.uint8))
    path = tmp_path / "sixteen.png"
    Image.fromarray(arr).save(path)  # I;16 PNG
    assert np.array_equal(load_image(path)[..., 0], out[..., 0])


def test_float_unit_range(chelsea):
    out = load_image(chelsea.astype(np.float32) / 255.0)
    assert np.abs(out.astype(int) - chelsea.astype(int)).max() <= 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(chelsea.astype(np.float32))
    bad = chelsea.astype(np.float32) / 255
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_image(bad)


def test_file_roundtrip_and_exif_rotation(chelsea, tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(chelsea).save(path)
    assert np.array_equal(load_image(path), chelsea)
    assert np.array_equal(load_image(str(path)), chelsea)
    # EXIF orientation 6 = rotate 90 degrees clockwise on display
    img = Image.fromarray(chelsea)
    exif = img.getexif()
    exif[0x0112] = 6
    jpg = tmp_path / "rotated.jpg"
    img.save(jpg, exif=exif, quality=95)
    out = load_image(jpg)
    assert out.shape == (chelsea.shape[1], chelsea.shape[0], 3)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda p: None, ValueError, "not found"),
        (lambda p: p.write_bytes(b""), ValueError, "empty"),
        (lambda p: p.write_text("hello, I am not a picture"), ValueError, "not a readable image"),
    ],
    ids=["missing", "empty", "text-as-jpg"],
)
def test_bad_files(tmp_path, make, exc, match):
    path = tmp_path / "photo.jpg"
    make(path)
    with pytest.raises(exc, match=match):
        load_image(path)


def test_truncated_jpeg(chelsea, tmp_path):
    path = tmp_path / "full.jpg"
    Image.fromarray(chelsea).save(path, quality=90)
    data = path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        load_image(cut)


def test_directory_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "arr, exc",
    [
        (np.zeros((0, 5, 3), np.uint8), ValueError),
        (np.zeros((4, 5, 3, 2), np.uint8), ValueError),
        (np.zeros((4, 5, 7), np.uint8), ValueError),
        (np.zeros((4, 5, 3), np.complex64), InputError),
    ],
    ids=["zero-size", "4d", "7-channels", "complex"],
)
def test_bad_arrays(arr, exc):
    with pytest.raises(exc):
        load_image(arr)


def test_unsupported_type():
    with pytest.raises(InputError, match="expected a path"):
        load_image(42)


def test_not_an_image_after_ultralytics_import(tmp_path):
    """ultralytics patches PIL.Image.open to pip-install pi-heif on unknown files: bypassed."""
    import ultralytics.utils.patches  # noqa: F401  (applies the patch)

    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(path)
