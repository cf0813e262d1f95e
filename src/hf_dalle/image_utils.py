"""Images of any PIL mode as 8-bit RGB, for priming and for training data."""

import numpy as np
from PIL import Image


# Full-scale value of the modes whose pixels `Image.convert("RGB")` would clip at 255 instead of scaling: 16-bit
# integers (`I` is how older Pillow versions open 16-bit PNGs) and floats, which hf_dalle reads as [0, 1] like its
# pixel tensors.
HIGH_RANGE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def to_rgb(image: Image.Image) -> Image.Image:
    """
    `image` as an 8-bit RGB image. 16-bit and 32-bit integer images (`I;16*`, `I`) are scaled from [0, 65535] and
    float images (`F`) from [0, 1] (a plain `convert("RGB")` would clip them to white); other modes go through
    `convert("RGB")`. Values outside the mode's range, or NaNs, raise a `ValueError`.
    """
    full_scale = HIGH_RANGE_MODES.get(image.mode)
    if full_scale is None:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if not (low >= 0 and high <= full_scale):
        raise ValueError(
            f"A mode {image.mode!r} image must have values in [0, {full_scale:g}], got values in [{low:.6g}, "
            f"{high:.6g}]."
        )
    gray = np.round(values * (255 / full_scale)).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


__all__ = ["to_rgb"]
