"""The pixel judge of the shapes world: does an image show what its caption says? Decided from pixels alone.

1. Every pixel gets the nearest of the palette colors and the background color (squared RGB distance).
2. Each color's mask is opened (eroded, then dilated, by a square of side `2 r + 1`, `r` = 1 px per 64 px of image
   side): this removes specks and the thin rims of in-between colors that a blurry edge leaves (a gray-orange edge
   is nearest to yellow, for example).
3. The connected components (4-neighbours) of the opened masks with at least `MIN_OBJECT_AREA` of the image are the
   objects; an object's pixels are its component grown back by `r` within the unopened mask of its color.
4. An object's shape is read from the fill ratio of its bounding box (pixels / box area): a triangle fills about
   1/2 of its box, a circle pi/4 ~ 0.785, a square 1. Below `TRIANGLE_MAX_FILL` (0.68) a triangle, from
   `SQUARE_MIN_FILL` (0.89) a square, a circle in between. The cut points sit between the ranges measured on renders
   of 48 px and more (64 px: triangles 0.52-0.59, circles 0.73-0.84, squares 1.0), also after a gaussian blur of
   1.5 px, which rounds a triangle's apex away and raises its fill ratio to at most 0.67 (circles down to 0.71,
   squares 0.92). Below 48 px aliasing makes small circles and triangles overlap; judge such images with care.
5. The relation compares the centroids of the two objects: along the relation's axis the first object must be on
   the named side by at least `MIN_RELATION_DISTANCE` of the image side, and farther apart along that axis than
   across it.

The verdict: colors are right if the detected objects have exactly the caption's colors (no object missing, none
extra); shapes are right if every caption object was found with its shape; the relation (two-object captions) is right
if both were found and their centroids agree; `correct` if all hold.
"""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .shapes import BACKGROUND_COLOR, COLORS, PALETTE, ShapesCaption, parse_caption


# Thresholds in fractions of the image (area) or image side (distance). The smallest object the world draws (a
# triangle of side 0.25) covers 1/32 of the image; an object must keep 40% of that to count.
MIN_OBJECT_AREA = 0.4 / 32
TRIANGLE_MAX_FILL = 0.68
SQUARE_MIN_FILL = 0.89
MIN_RELATION_DISTANCE = 0.1

_REFERENCE_COLORS = np.array([BACKGROUND_COLOR] + [PALETTE[color] for color in COLORS], dtype=np.float32)
# Relation -> (axis: 0 = x, 1 = y; sign of (second - first) along it).
_RELATION_AXIS = {"to the left of": (0, 1), "to the right of": (0, -1), "above": (1, 1), "below": (1, -1)}


@dataclass(frozen=True)
class DetectedObject:
    """An object found in an image: its color, shape, centroid (x, y in pixels), area (pixels) and box fill ratio."""

    color: str
    shape: str
    centroid: tuple[float, float]
    area: int
    fill_ratio: float


@dataclass(frozen=True)
class JudgeResult:
    """The judge's verdict on one image: the parsed caption, what was seen, and which parts match."""

    caption: ShapesCaption
    objects: tuple[DetectedObject, ...]
    colors_correct: bool
    shapes_correct: bool
    relation_correct: bool | None  # None for one-object captions
    correct: bool


def _to_pixels(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            "`image` must be a PIL image or an array of shape (height, width, 3), got "
            + (f"shape {image.shape}." if isinstance(image, np.ndarray) else f"{type(image).__name__}.")
        )
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating) and image.size and 0.0 <= image.min() and image.max() <= 1.0:
        return image.astype(np.float32) * 255
    raise ValueError(f"`image` must hold uint8 pixels or floats in [0, 1], got dtype {image.dtype}.")


def _shift_reduce(mask: np.ndarray, radius: int, reduce, fill: bool) -> np.ndarray:
    # Erosion / dilation by a (2r+1)^2 square; scipy.ndimage would do it, but the package does not depend on scipy.
    height, width = mask.shape
    padded = np.pad(mask, radius, constant_values=fill)
    out = mask.copy()
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out = reduce(out, padded[dy : dy + height, dx : dx + width])
    return out


def _connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 4-connected components of `mask` (min-label propagation, no scipy dependency)."""
    height, width = mask.shape
    unlabelled = height * width
    labels = np.where(mask, np.arange(height * width).reshape(height, width), unlabelled)
    while True:
        padded = np.pad(labels, 1, constant_values=unlabelled)
        smallest = np.minimum.reduce(
            [labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        )
        smallest = np.where(mask, smallest, unlabelled)
        # Pointer jumping: follow each label to its own label, which makes long components converge fast.
        flat = smallest.ravel()
        jumped = np.where(mask, flat[np.minimum(smallest, unlabelled - 1)], unlabelled)
        jumped = np.minimum(jumped, smallest)
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    return [labels == label for label in np.unique(labels[mask])]


def classify_shape(fill_ratio: float) -> str:
    """Shape from the fill ratio of the bounding box (see the module doc)."""
    if fill_ratio < TRIANGLE_MAX_FILL:
        return "triangle"
    return "square" if fill_ratio >= SQUARE_MIN_FILL else "circle"


def detect_objects(image) -> list[DetectedObject]:
    """Objects in a shapes-world image, from its pixels alone (steps 1-4 of the module doc)."""
    return _detect_objects(_to_pixels(image))


def _detect_objects(pixels: np.ndarray) -> list[DetectedObject]:
    height, width = pixels.shape[:2]
    nearest = ((pixels[:, :, None, :] - _REFERENCE_COLORS) ** 2).sum(-1).argmin(-1)  # 0 = background
    radius = max(1, round(min(height, width) / 64))
    min_area = MIN_OBJECT_AREA * height * width
    objects = []
    for color_index, color in enumerate(COLORS, start=1):
        mask = nearest == color_index
        if mask.sum() < min_area:
            continue
        opened = _shift_reduce(_shift_reduce(mask, radius, np.logical_and, True), radius, np.logical_or, False)
        if opened.sum() < min_area:
            continue
        for component in _connected_components(opened):
            if component.sum() < min_area:
                continue
            component = _shift_reduce(component, radius, np.logical_or, False) & mask
            ys, xs = np.nonzero(component)
            box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            fill_ratio = float(len(ys) / box_area)
            objects.append(
                DetectedObject(
                    color=color,
                    shape=classify_shape(fill_ratio),
                    centroid=(float(xs.mean() + 0.5), float(ys.mean() + 0.5)),
                    area=int(len(ys)),
                    fill_ratio=fill_ratio,
                )
            )
    return objects


def judge_image(image, caption: str | ShapesCaption) -> JudgeResult:
    """Judge whether `image` (PIL image, or [H, W, 3] uint8 / [0, 1] float array) shows `caption`."""
    parsed = caption if isinstance(caption, ShapesCaption) else parse_caption(caption)
    pixels = _to_pixels(image)
    objects = _detect_objects(pixels)
    colors_correct = sorted(obj.color for obj in objects) == sorted(color for color, _ in parsed.objects)
    found = {obj.color: obj for obj in objects}
    matched = [found.get(color) for color, _ in parsed.objects]
    shapes_correct = all(obj is not None and obj.shape == shape for obj, (_, shape) in zip(matched, parsed.objects))
    relation_correct = None
    if parsed.relation is not None:
        relation_correct = False
        if all(obj is not None for obj in matched):
            axis, sign = _RELATION_AXIS[parsed.relation]
            delta = np.subtract(matched[1].centroid, matched[0].centroid)
            along, across = sign * delta[axis], abs(delta[1 - axis])
            relation_correct = bool(along >= MIN_RELATION_DISTANCE * min(pixels.shape[:2]) and along > across)
    correct = colors_correct and shapes_correct and relation_correct is not False
    return JudgeResult(
        caption=parsed,
        objects=tuple(objects),
        colors_correct=colors_correct,
        shapes_correct=shapes_correct,
        relation_correct=relation_correct,
        correct=correct,
    )


def best_of_k_accuracy(correct_by_score: list[bool], k: int) -> float:
    """The expected accuracy of reranking: the chance that the best-scored of `k` candidates is correct, estimated
    from `n >= k` candidates judged and sorted by score, best first.

    Drawing `k` of the `n` candidates at random (all subsets equally likely, as for `k` fresh samples), candidate `i`
    (0-based) is the best of the subset when it is in it and the other `k - 1` come from the `n - 1 - i` below it:
    probability `C(n - 1 - i, k - 1) / C(n, k)`. Averaging over every subset uses all `n` samples (the estimator of
    Codex's pass@k, with the reranker's order). `k = 1` gives the share of correct candidates, `k = n` the verdict on
    the best one.
    """
    n = len(correct_by_score)
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be between 1 and the number of candidates ({n}), got {k}.")
    subsets = math.comb(n, k)
    return sum(math.comb(n - 1 - i, k - 1) for i, correct in enumerate(correct_by_score) if correct) / subsets


def any_of_k_accuracy(num_correct: int, n: int, k: int) -> float:
    """The chance that at least one of `k` candidates is correct (a perfect reranker's accuracy, pass@k), estimated
    from `num_correct` correct among `n >= k` judged candidates."""
    if not 1 <= k <= n or not 0 <= num_correct <= n:
        raise ValueError(f"Need 1 <= k <= n and 0 <= num_correct <= n, got k={k}, n={n}, num_correct={num_correct}.")
    return 1.0 - math.comb(n - num_correct, k) / math.comb(n, k)


__all__ = [
    "DetectedObject",
    "JudgeResult",
    "any_of_k_accuracy",
    "best_of_k_accuracy",
    "classify_shape",
    "detect_objects",
    "judge_image",
]
