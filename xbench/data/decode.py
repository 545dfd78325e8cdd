"""Decode one image file to a uint8 RGB array of a fixed size.

X-rays come as 8-bit grayscale, RGB, RGBA, palette or 16-bit PNG/JPEG. All of
them become (size, size, 3) uint8 with the gray value repeated in 3 channels
where the source is gray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: File suffixes read as images; anything else in a class folder is ignored.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class CorruptImage(Exception):
    """The file exists but cannot be decoded (zero bytes, truncated, not an image)."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if top <= 255:
        return np.clip(arr, 0, 255).astype(np.uint8)
    # Many 16-bit radiographs hold 10 to 14 significant bits: scale by the
    # smallest power-of-two range that holds the data instead of by 65535,
    # which would leave a 12-bit image almost black.
    bits = int(np.ceil(np.log2(top + 1)))
    return np.clip(np.round(arr * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Read ``path`` and return a (size, size, 3) uint8 array.

    Raises:
        CorruptImage: the file is empty, truncated or not a decodable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CorruptImage(f"{path}: zero-byte file")
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                gray = _to_uint8(np.asarray(im))
                im = Image.fromarray(gray, mode="L")
            elif im.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
                im = im.convert("RGB") if im.mode not in ("LA", "1") else im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im)
    except CorruptImage:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise CorruptImage(f"{path}: {exc}") from None
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def decode_mask(path: str | Path, size: int) -> np.ndarray:
    """Read a binary mask and return (size, size) bool (nearest-neighbour resize)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.NEAREST)
            return np.asarray(im) > 127
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise CorruptImage(f"{path}: {exc}") from None
