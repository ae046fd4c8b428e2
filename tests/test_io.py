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


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_other_integer_types_in_8bit_range_are_8bit(dtype):
    """Integer types without a bit depth (int64 from np.array([...]), ...) holding 0..255 are
    8-bit data, not 16-bit divided by 257."""
    values = np.array([[[127, 100, 0]]]) if dtype == np.int8 else np.array([[[255, 128, 0]]])
    out = load_image(values.astype(dtype))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == values[0, 0].tolist()
    assert load_image(np.full((2, 2), 100, dtype))[0, 0].tolist() == [100, 100, 100]


@pytest.mark.parametrize(
    "arr",
    [np.full((4, 4, 3), 300, np.int32), np.full((4, 4), -1, np.int16), np.full((4, 4), 70000)],
    ids=["int32-300", "int16-negative", "int64-70000"],
)
def test_other_integer_types_out_of_8bit_range(arr):
    with pytest.raises(InputError, match=r"must lie in \[0, 255\]") as e:
        load_image(arr)
    assert "uint8" in str(e.value) and "uint16" in str(e.value)  # the fix
    assert f"[{arr.min()}, {arr.max()}]" in str(e.value)  # the value range


def test_uint16_stays_16bit_in_either_byte_order(tmp_path):
    arr = np.array([[0, 257, 40000, 65535]], np.uint16)
    want = np.round(arr / 257.0).astype(np.uint8)
    assert np.array_equal(load_image(arr)[..., 0], want)
    assert np.array_equal(load_image(arr.astype(">u2"))[..., 0], want)
    big = Image.frombytes("I;16B", (4, 1), arr.astype(">u2").tobytes())
    assert np.array_equal(load_image(big)[..., 0], want)
    path = tmp_path / "big_endian.tif"
    big.save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16B"  # the file really holds big-endian 16-bit samples
    assert np.array_equal(load_image(path)[..., 0], want)


def test_mode_i_decoded_from_16bit_samples_is_16bit():
    """Pillow < 10.3 opens a 16-bit grayscale PNG as mode I (raw mode I;16B): still 16-bit."""
    arr = np.array([[0, 257, 40000, 65535]], np.uint16)
    img = Image.fromarray(arr.astype(np.int32))
    assert img.mode == "I"
    img.tile = [("zip", (0, 0, 4, 1), 0, "I;16B")]  # what PngImagePlugin sets
    want = np.round(arr / 257.0).astype(np.uint8)
    assert np.array_equal(load_image(img)[..., 0], want)
    img.tile = []  # a mode I image of unknown origin: 8-bit rule
    with pytest.raises(InputError, match=r"must lie in \[0, 255\]"):
        load_image(img)


def test_out_of_range_files_say_to_convert_the_file(tmp_path):
    floats = tmp_path / "float.tif"
    Image.fromarray(np.full((4, 4), 3.5, np.float32)).save(floats)
    with pytest.raises(InputError, match="convert the file to an 8-bit") as e:
        load_image(floats)
    assert "divide by 255" not in str(e.value) and "float.tif" in str(e.value)
    ints = tmp_path / "int32.tif"
    Image.fromarray(np.full((4, 4), 40000, np.int32)).save(ints)
    with pytest.raises(InputError, match="convert the file to an 8-bit") as e:
        load_image(ints)
    assert "[40000, 40000]" in str(e.value)
    # the array advice stays
    with pytest.raises(InputError, match="divide by 255"):
        load_image(np.full((4, 4), 3.5, np.float32))


@pytest.mark.parametrize(
    "url", ["https://x/cat.jpg", "http://example.com/photos/dog.png", "HTTPS://X/a.jpg"]
)
def test_urls_are_refused_with_the_original_string(url):
    with pytest.raises(InputError, match="download the file first") as e:
        load_image(url)
    assert repr(url) in str(e.value) and "URL" in str(e.value)
