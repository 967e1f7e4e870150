"""The speaker image: (3, size, size) float32 in [0, 1], bicubic-resized RGB."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np


def image_tensor(path: Path | BinaryIO, size: int) -> np.ndarray:
    """(3, size, size) float32 in [0, 1], from a file or its bytes (an upload)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()
