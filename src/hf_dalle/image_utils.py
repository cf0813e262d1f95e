"""Images of any PIL mode as 8-bit RGB, for priming and for training data; a grid of results with its captions."""

import numpy as np
from PIL import Image, ImageDraw


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


def captioned_grid(images: list[Image.Image], captions: list[str], cols: int, margin: int = 6) -> Image.Image:
    """`images` in rows of `cols`, one row per caption, each row's caption written to its left (black on white)."""
    if len(images) != len(captions) * cols:
        raise ValueError(f"{len(captions)} rows of {cols} need {len(captions) * cols} images, got {len(images)}.")
    width, height = images[0].size
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(draw.textbbox((0, 0), caption)[2] for caption in captions)
    left = text_width + 2 * margin
    grid = Image.new("RGB", (left + cols * width, len(captions) * height), "white")
    draw = ImageDraw.Draw(grid)
    for row, caption in enumerate(captions):
        top, bottom = draw.textbbox((0, 0), caption)[1::2]
        draw.text((margin, row * height + (height - bottom - top) // 2), caption, fill="black")
        for col in range(cols):
            grid.paste(images[row * cols + col], (left + col * width, row * height))
    return grid


__all__ = ["captioned_grid", "to_rgb"]
