"""uint8 images as encoded bytes (JPEG, PNG) for widgets and HTML pages.

The explorer's panels and the embedding view's thumbnails are sent to the browser as encoded
images; both encode here. Pillow is imported by the function that uses it.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np

__all__ = ["encode_image"]


def encode_image(
    image: np.ndarray, fmt: Literal["jpeg", "png"] = "jpeg", quality: int = 90
) -> bytes:
    """uint8 (H, W, 3) -> JPEG (no chroma subsampling) or PNG (fastest zlib level) bytes."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    elif fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"encode_image: fmt must be 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()
