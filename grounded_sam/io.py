"""Image loading: the one place images are read and normalised."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from grounded_sam.errors import InputError

ImageLike = str | os.PathLike | Image.Image | np.ndarray

__all__ = ["ImageLike", "load_image", "image_stem"]


def _pil_open(path: Path) -> Image.Image:
    """``PIL.Image.open``, bypassing ultralytics' replacement of it.

    Importing ultralytics (>= 8.3) swaps ``PIL.Image.open`` for a wrapper that, on a file PIL
    cannot identify, tries to pip-install ``pi-heif`` at run time. We never auto-install, and a
    non-image must stay a clear ``ValueError``, so use the original function it wraps.
    """
    opener = Image.open
    module = getattr(opener, "__module__", "") or ""
    if module.startswith("ultralytics"):
        opener = getattr(sys.modules.get(module), "_image_open", opener)
    return opener(path)


def _describe(image: object) -> str:
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} and dtype {image.dtype}"
    if isinstance(image, Image.Image):
        return f"PIL image of mode {image.mode!r} and size {image.size}"
    if isinstance(image, (str, os.PathLike)):
        return f"file {str(image)!r}"
    return f"object of type {type(image).__name__}"


def _sixteen_bit_tiles(img: Image.Image) -> bool:
    """Whether an opened (not yet loaded) file decodes 16-bit samples: Pillow before 10.3
    opens a 16-bit grayscale PNG as mode ``I`` with the raw mode ``I;16B``. Must be read
    before ``load()``, which clears the decoder tiles."""
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and rawmode.startswith("I;16"):
            return True
    return False


def _from_pil(
    img: Image.Image, name: str, *, from_file: bool = False, sixteen_bit: bool = False
) -> np.ndarray:
    if img.width == 0 or img.height == 0:
        raise InputError(f"{name} has zero size {img.size}; expected a non-empty image")
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):  # I;16B: big-endian uint16
        arr = np.asarray(img)
        if sixteen_bit and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)  # 16-bit samples Pillow widened to mode I
        return _from_array(arr, name, from_file=from_file)
    if mode != "RGB":
        # RGBA/LA/P/L/CMYK/YCbCr/1 -> RGB; alpha is dropped.
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _from_array(arr: np.ndarray, name: str, *, from_file: bool = False) -> np.ndarray:
    if arr.size == 0:
        raise InputError(
            f"{name}: image is empty ({_describe(arr)}); expected HxW or HxWxC with H, W > 0"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(
            f"{name}: expected an HxW, HxWx1, HxWx3 or HxWx4 image, got {_describe(arr)}"
        )
    if not arr.dtype.isnative:  # byte order is a storage detail, not the user's problem
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.shape[2] in (2, 4):  # drop alpha
        arr = arr[:, :, :-1]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)  # 16-bit -> 8-bit
    elif np.issubdtype(arr.dtype, np.integer):
        # other integer types carry no bit depth: 0..255 is 8-bit data, anything else is
        # ambiguous (16-bit? 12-bit? labels?) and is the user's to convert
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            if from_file:
                fix = "convert the file to an 8-bit (0-255) or 16-bit (0-65535) image"
            else:
                fix = (
                    "convert it to uint8 (values 0-255) or uint16 (values 0-65535), "
                    "e.g. arr.astype(np.uint8) after scaling"
                )
            raise InputError(
                f"{name}: {arr.dtype} image values lie in [{lo}, {hi}]; integer images other "
                f"than uint8/uint16 are read as 8-bit and must lie in [0, 255]: {fix}"
            )
        out = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name}: float image contains NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            if from_file:
                raise InputError(
                    f"{name} holds floating-point pixel values in [{lo:.3g}, {hi:.3g}]; "
                    "float images must lie in [0, 1]: convert the file to an 8-bit "
                    "(0-255) image"
                )
            raise InputError(
                f"{name}: float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                "convert to uint8 (0-255) or divide by 255"
            )
        out = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise InputError(
            f"{name}: unsupported dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]"
        )
    return np.ascontiguousarray(out)


_URL = re.compile(r"^[a-z][a-z0-9+.-]+://", re.IGNORECASE)  # not C://


def load_image(image: ImageLike) -> np.ndarray:
    """Read and normalise an image.

    Args:
        image: a path (str or PathLike), a ``PIL.Image.Image`` or a numpy array
            (HxW grayscale, HxWx3 RGB, HxWx4 RGBA; uint8, uint16, float in [0, 1], or another
            integer type with values in [0, 255]).

    Returns:
        np.ndarray: HxWx3 ``uint8`` RGB, C-contiguous. Files have their EXIF
        orientation applied; alpha is dropped; 16-bit data is scaled to 8 bits.

    Raises:
        InputError: the file is missing, empty, truncated or not an image, a URL was given,
            the array has the wrong shape, dtype or value range, or the input is of an
            unsupported type.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image, "image array")
    if isinstance(image, Image.Image):
        return _from_pil(image, "PIL image", sixteen_bit=_sixteen_bit_tiles(image))
    if isinstance(image, str) and _URL.match(image.strip()):
        raise InputError(
            f"image {image!r} is a URL; grounded-sam does not fetch URLs: download the file "
            "first (e.g. curl -O URL) and pass its local path"
        )
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"image file not found: {str(path)!r}")
        if path.is_dir():
            raise InputError(f"{str(path)!r} is a directory; expected an image file")
        if path.stat().st_size == 0:
            raise InputError(f"image file {str(path)!r} is empty (0 bytes)")
        try:
            with _pil_open(path) as img:
                sixteen_bit = _sixteen_bit_tiles(img)
                img.load()  # force decoding now, so truncated files fail here
                img = ImageOps.exif_transpose(img)
                return _from_pil(
                    img, f"image file {str(path)!r}", from_file=True, sixteen_bit=sixteen_bit
                )
        except (UnidentifiedImageError, ImportError) as e:
            # ImportError: a patched PIL.Image.open (ultralytics) reaching for an optional
            # decoder plugin for a file PIL cannot identify
            raise InputError(
                f"{str(path)!r} is not a readable image (PIL cannot identify it); "
                "expected a JPEG, PNG, TIFF, BMP or WebP file"
            ) from e
        except (OSError, SyntaxError) as e:
            raise InputError(f"image file {str(path)!r} is truncated or corrupt: {e}") from e
    raise InputError(
        f"unsupported image input: {_describe(image)}; expected a path, a PIL.Image or "
        "a HxWx3 uint8 numpy array"
    )


def image_stem(image: object, index: int) -> str:
    """A file-system-safe name for an image: the file stem for paths, else ``image_<index>``."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).stem
    return f"image_{index:04d}"
