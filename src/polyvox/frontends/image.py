"""The speaker image: (3, size, size) float32 in [0, 1], bicubic-resized RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def image_tensor(path: Path, size: int) -> np.ndarray:
    """(3, size, size) float32 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        return picture_tensor(image, size)


def picture_tensor(image, size: int) -> np.ndarray:
    """An opened PIL image as :func:`image_tensor` gives it (the service checks the image first)."""
    from PIL import Image

    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()
