"""The procedural shapes world of the bundled demo model (`hf_dalle.DEMO_MODEL_DIR`; its model card describes it).

Captions follow a two-sentence grammar, always lowercase:

- one object: `a {color} {shape}`, e.g. `a red circle`
- two objects: `a {color} {shape} {relation} a {color} {shape}`, e.g. `a blue square above a green triangle`;
  the two objects of a caption always have different colors. The article is always `a`, even before a vowel
  (`a orange circle`), so every caption has the same word structure.

with the colors of `PALETTE`, the shapes `circle`, `square`, `triangle` (filled; the triangle stands upright, apex at
the top) and the relations `to the left of`, `to the right of`, `above`, `below`, drawn on a plain light gray
(`BACKGROUND_COLOR`) square image without anti-aliasing, so every pixel is exactly a palette color.

Layout (all lengths are fractions of the image side `S`, so any image size draws the same scenes):

- every object fits a square bounding box of side `s` drawn uniformly from `OBJECT_SIZE_RANGE` (0.25 S to 0.40 S:
  16 to 25 px at 64 px), at least `BORDER` (0.03 S) inside the image; a triangle's base and height are both `s`;
- two objects are separated along the relation's axis ("main" axis: x for left / right, y for above / below): their
  box centers are at least `(s_1 + s_2) / 2 + RELATION_GAP` (0.06 S) apart, so the boxes never overlap and a clear gap
  separates them; across the main axis the centers are at most half the main distance apart, so the relation is never
  ambiguous (an object "to the left of" another is never also clearly "above" it).

Held-out split: zero-shot composition, DALL-E's point in miniature. Three kinds of captions never appear in training:

- `HELD_OUT_PAIRINGS`: (color, shape) pairings that are never drawn in training, in any position, alone or with
  another object: `red square`, `green triangle`, `blue circle`. Every color still appears in training with two or
  three shapes, and every shape with five or six colors, so each of these can be composed from seen parts.
- `HELD_OUT_COMBINATIONS`: pairs of (seen) objects that never appear together in training, in any order or relation,
  e.g. `orange circle` with `purple square`.
- `HELD_OUT_ARRANGEMENTS`: scenes never drawn in training although their two objects do appear together in other
  arrangements: e.g. the yellow circle is never to the left of the purple triangle (neither
  `a yellow circle to the left of a purple triangle` nor its mirror `a purple triangle to the right of a yellow
  circle`), yet `a yellow circle above a purple triangle` is a training caption.

`caption_split(caption)` says which of `"train"`, `"held_out_pairing"`, `"held_out_combination"`,
`"held_out_arrangement"` a caption belongs to (the first that applies, in this order of precedence from the most
novel: pairing, combination, arrangement); `is_held_out` is `caption_split(caption) != "train"`.

Sampling is deterministic: sample `i` of `make_shapes_dataset(..., seed=seed)` is drawn from
`numpy.random.default_rng([seed, i])` alone, so it never depends on how many samples are made or in which chunks.
"""

from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image


PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
}
BACKGROUND_COLOR = (200, 200, 200)
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("to the left of", "to the right of", "above", "below")

# Layout, in fractions of the image side.
OBJECT_SIZE_RANGE = (0.25, 0.40)
BORDER = 0.03
RELATION_GAP = 0.06
# Across the relation's axis, the two centers are at most this fraction of their distance along it apart.
MAX_CROSS_OFFSET = 0.5

HELD_OUT_PAIRINGS = (("red", "square"), ("green", "triangle"), ("blue", "circle"))
# Unordered pairs of seen objects that are never drawn together in training.
HELD_OUT_COMBINATIONS = (
    (("orange", "circle"), ("purple", "square")),
    (("yellow", "triangle"), ("blue", "square")),
    (("red", "circle"), ("green", "square")),
    (("purple", "circle"), ("yellow", "square")),
    (("green", "circle"), ("red", "triangle")),
    (("blue", "triangle"), ("orange", "square")),
)
# (first object, relation, second object) with relation "to the left of" or "above"; the mirror caption
# (second object "to the right of" / "below" the first) is held out with it.
HELD_OUT_ARRANGEMENTS = (
    (("yellow", "circle"), "to the left of", ("purple", "triangle")),
    (("green", "square"), "to the left of", ("orange", "triangle")),
    (("purple", "circle"), "to the left of", ("blue", "triangle")),
    (("blue", "square"), "above", ("red", "circle")),
    (("orange", "circle"), "above", ("green", "square")),
    (("red", "triangle"), "above", ("yellow", "circle")),
)

SPLITS = ("train", "held_out", "held_out_pairing", "held_out_combination", "held_out_arrangement", "all")

# Relation -> (axis of the relation: 0 = x, 1 = y; +1 if the first object has the smaller coordinate, else -1).
_RELATION_GEOMETRY = {"to the left of": (0, 1), "to the right of": (0, -1), "above": (1, 1), "below": (1, -1)}
_MIRRORED_RELATION = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


@dataclass(frozen=True)
class ShapesCaption:
    """A parsed caption: one or two `(color, shape)` objects and, for two, the relation of the first to the second."""

    objects: tuple[tuple[str, str], ...]
    relation: str | None = None

    def __str__(self) -> str:
        phrases = [f"a {color} {shape}" for color, shape in self.objects]
        return phrases[0] if self.relation is None else f"{phrases[0]} {self.relation} {phrases[1]}"


def parse_caption(caption: str) -> ShapesCaption:
    """Parse a caption of the shapes grammar (case and surrounding whitespace are ignored).

    Raises `ValueError` naming what does not fit the grammar.
    """
    if not isinstance(caption, str):
        raise ValueError(f"A caption must be a string, got {type(caption).__name__}.")
    words = caption.lower().split()
    objects, relation, position = [], None, 0
    for object_index in range(2):
        phrase = words[position : position + 3]
        if len(phrase) != 3 or phrase[0] != "a" or phrase[1] not in PALETTE or phrase[2] not in SHAPES:
            raise ValueError(
                f"Caption {caption!r} does not fit the shapes grammar: expected 'a {{color}} {{shape}}' at word "
                f"{position + 1} with color in {COLORS} and shape in {SHAPES}."
            )
        objects.append((phrase[1], phrase[2]))
        position += 3
        if position == len(words) or object_index == 1:
            break
        relation = next((r for r in RELATIONS if words[position : position + len(r.split())] == r.split()), None)
        if relation is None:
            raise ValueError(
                f"Caption {caption!r} does not fit the shapes grammar: expected a relation out of {RELATIONS} "
                f"after {' '.join(words[:position])!r}."
            )
        position += len(relation.split())
    if position != len(words):
        raise ValueError(f"Caption {caption!r} does not fit the shapes grammar: unexpected words {words[position:]}.")
    if len(objects) == 2 and objects[0][0] == objects[1][0]:
        raise ValueError(f"Caption {caption!r}: the two objects of a caption must have different colors.")
    return ShapesCaption(objects=tuple(objects), relation=relation)


def _canonical_arrangement(parsed: ShapesCaption) -> tuple:
    """The scene a two-object caption describes, written with "to the left of" / "above" (mirrors collapse)."""
    first, second = parsed.objects
    if parsed.relation in ("to the right of", "below"):
        return (second, _MIRRORED_RELATION[parsed.relation], first)
    return (first, parsed.relation, second)


_HELD_OUT_PAIRING_SET = frozenset(HELD_OUT_PAIRINGS)
_HELD_OUT_COMBINATION_SET = frozenset(frozenset(pair) for pair in HELD_OUT_COMBINATIONS)
_HELD_OUT_ARRANGEMENT_SET = frozenset(HELD_OUT_ARRANGEMENTS)


def caption_split(caption: str | ShapesCaption) -> str:
    """`"train"`, `"held_out_pairing"`, `"held_out_combination"` or `"held_out_arrangement"` (see the module doc)."""
    parsed = caption if isinstance(caption, ShapesCaption) else parse_caption(caption)
    if any(obj in _HELD_OUT_PAIRING_SET for obj in parsed.objects):
        return "held_out_pairing"
    if len(parsed.objects) == 2:
        if frozenset(parsed.objects) in _HELD_OUT_COMBINATION_SET:
            return "held_out_combination"
        if _canonical_arrangement(parsed) in _HELD_OUT_ARRANGEMENT_SET:
            return "held_out_arrangement"
    return "train"


def is_held_out(caption: str | ShapesCaption) -> bool:
    """Whether a caption never appears in training (any of the three held-out kinds)."""
    return caption_split(caption) != "train"


def all_captions(num_objects: int | None = None) -> list[str]:
    """Every caption of the grammar (18 with one object, 1080 with two), in a fixed order."""
    if num_objects not in (None, 1, 2):
        raise ValueError(f"`num_objects` must be 1, 2 or None (both), got {num_objects!r}.")
    objects = list(product(COLORS, SHAPES))
    captions = []
    if num_objects in (None, 1):
        captions += [str(ShapesCaption(objects=(obj,))) for obj in objects]
    if num_objects in (None, 2):
        captions += [
            str(ShapesCaption(objects=(first, second), relation=relation))
            for first, relation, second in product(objects, RELATIONS, objects)
            if first[0] != second[0]
        ]
    return captions


def split_captions(split: str = "train", num_objects: int | None = None) -> list[str]:
    """The captions of a split (`SPLITS`): `"held_out"` is the union of the three held-out kinds, `"all"` everything."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    captions = all_captions(num_objects)
    if split == "all":
        return captions
    if split == "held_out":
        return [caption for caption in captions if is_held_out(caption)]
    return [caption for caption in captions if caption_split(caption) == split]


@dataclass(frozen=True)
class PlacedObject:
    """An object of a scene: its color, shape, and square bounding box (center and side), in pixels."""

    color: str
    shape: str
    center_x: float
    center_y: float
    size: float


def sample_layout(caption: str | ShapesCaption, rng: np.random.Generator, image_size: int = 64) -> list[PlacedObject]:
    """Draw sizes and positions for the objects of a caption (see the module doc for the rules)."""
    parsed = caption if isinstance(caption, ShapesCaption) else parse_caption(caption)
    low, high = OBJECT_SIZE_RANGE
    sizes = rng.uniform(low * image_size, high * image_size, size=len(parsed.objects))
    border = BORDER * image_size
    # Each center coordinate must keep its box `border` inside the image: [border + s/2, image_size - border - s/2].
    lower, upper = border + sizes / 2, image_size - border - sizes / 2
    centers = np.empty((len(sizes), 2))
    if parsed.relation is None:
        centers[0] = rng.uniform(lower[0], upper[0], size=2)
    else:
        axis, direction = _RELATION_GEOMETRY[parsed.relation]
        near, far = (0, 1) if direction == 1 else (1, 0)  # near: the object with the smaller coordinate on `axis`
        # Along the axis: the distance first (so every feasible distance is reachable), then the near object.
        min_distance = (sizes[0] + sizes[1]) / 2 + RELATION_GAP * image_size
        max_distance = upper[far] - lower[near]
        distance = rng.uniform(min_distance, max_distance)
        centers[near, axis] = rng.uniform(lower[near], upper[far] - distance)
        centers[far, axis] = centers[near, axis] + distance
        # Across the axis: the first object anywhere, the second within MAX_CROSS_OFFSET * distance of it.
        cross = 1 - axis
        centers[0, cross] = rng.uniform(lower[0], upper[0])
        reach = MAX_CROSS_OFFSET * distance
        centers[1, cross] = rng.uniform(
            max(lower[1], centers[0, cross] - reach), min(upper[1], centers[0, cross] + reach)
        )
    return [
        PlacedObject(color=color, shape=shape, center_x=float(cx), center_y=float(cy), size=float(size))
        for (color, shape), (cx, cy), size in zip(parsed.objects, centers, sizes)
    ]


def shape_mask(shape: str, center_x: float, center_y: float, size: float, image_size: int) -> np.ndarray:
    """Boolean [image_size, image_size] mask of the pixels whose centers lie inside the shape."""
    coords = np.arange(image_size) + 0.5
    x, y = coords[None, :], coords[:, None]
    half = size / 2
    if shape == "circle":
        return (x - center_x) ** 2 + (y - center_y) ** 2 <= half**2
    inside_box = (np.abs(x - center_x) <= half) & (np.abs(y - center_y) <= half)
    if shape == "square":
        return inside_box
    if shape == "triangle":
        # Upright: apex at the top center, base along the bottom edge; the half width grows linearly downwards.
        depth = y - (center_y - half)
        return inside_box & (np.abs(x - center_x) <= depth / 2)
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render_layout(layout: list[PlacedObject], image_size: int = 64) -> Image.Image:
    """Draw placed objects on the gray background (no anti-aliasing: every pixel is a palette color)."""
    pixels = np.empty((image_size, image_size, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND_COLOR
    for obj in layout:
        pixels[shape_mask(obj.shape, obj.center_x, obj.center_y, obj.size, image_size)] = PALETTE[obj.color]
    return Image.fromarray(pixels)


def render_caption(caption: str | ShapesCaption, seed: int = 0, image_size: int = 64) -> Image.Image:
    """A random drawing of `caption` (deterministic per `seed`)."""
    _check_image_size(image_size)
    return render_layout(sample_layout(caption, np.random.default_rng(seed), image_size), image_size)


def redraw_with_another_shape(
    image: Image.Image, caption: str | ShapesCaption, rng: np.random.Generator
) -> tuple[Image.Image, str] | None:
    """A hard negative for a reranker: a clean drawing of `caption` (as `render_caption` makes it) with one of its
    objects redrawn in place (same color, box and position) as another shape, picked from the changes whose scene is
    still a training caption, so that nothing held out is ever drawn. Returns the new drawing and the caption it
    shows, or None when no object can change shape that way."""
    parsed = caption if isinstance(caption, ShapesCaption) else parse_caption(caption)
    pixels = np.array(image.convert("RGB"))
    drawn = {color: (pixels == PALETTE[color]).all(-1) for color, _ in parsed.objects}  # colors never repeat
    missing = [color for color, mask in drawn.items() if not mask.any()]
    if missing:
        raise ValueError(f"The image shows no {missing[0]} pixel, so it is not a clean drawing of {str(parsed)!r}.")
    changes = []
    for index, (color, shape) in enumerate(parsed.objects):
        for other in SHAPES:
            objects = list(parsed.objects)
            objects[index] = (color, other)
            changed = ShapesCaption(objects=tuple(objects), relation=parsed.relation)
            if other != shape and caption_split(changed) == "train":
                changes.append((index, changed))
    if not changes:
        return None
    index, changed = changes[rng.integers(len(changes))]
    color, shape = changed.objects[index]
    ys, xs = np.nonzero(drawn[color])
    size = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    center_x, center_y = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    box = np.zeros_like(drawn[color])
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True  # the object's own: it never overlaps the other's
    pixels[drawn[color]] = BACKGROUND_COLOR
    pixels[shape_mask(shape, center_x, center_y, size, pixels.shape[0]) & box] = PALETTE[color]
    return Image.fromarray(pixels), str(changed)


def _check_image_size(image_size: int) -> None:
    # Below 32 px the smallest objects (a quarter of the side) are too small to tell the shapes apart.
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"`image_size` must be an integer >= 32, got {image_size!r}.")


def generate_sample(
    index: int,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    one_object_fraction: float = 0.25,
) -> tuple[Image.Image, str]:
    """Sample `index` of the stream `(seed, split)`: a caption of the split and a drawing of it.

    With probability `one_object_fraction` the caption has one object, else two (if the split has captions of
    only one kind, such as `"held_out_combination"`, always that kind). The sample depends only on its
    arguments, through `numpy.random.default_rng([seed, index])`.
    """
    _check_image_size(image_size)
    if not 0.0 <= one_object_fraction <= 1.0:
        raise ValueError(f"`one_object_fraction` must be in [0, 1], got {one_object_fraction}.")
    if index < 0 or seed < 0:
        raise ValueError(f"`index` and `seed` must be non-negative, got index={index}, seed={seed}.")
    rng = np.random.default_rng([seed, index])
    by_count = {count: _split_captions_cached(split, count) for count in (1, 2)}
    num_objects = 1 if rng.random() < one_object_fraction else 2
    if not by_count[num_objects]:
        num_objects = 3 - num_objects
    candidates = by_count[num_objects]
    caption = candidates[rng.integers(len(candidates))]
    return render_layout(sample_layout(caption, rng, image_size), image_size), caption


_CAPTION_CACHE: dict[tuple[str, int], list[str]] = {}


def _split_captions_cached(split: str, num_objects: int) -> list[str]:
    # Enumerating and classifying the 1098 captions takes milliseconds; sampling thousands of images should not
    # repeat it per sample.
    key = (split, num_objects)
    if key not in _CAPTION_CACHE:
        _CAPTION_CACHE[key] = split_captions(split, num_objects)
    return _CAPTION_CACHE[key]


def make_shapes_dataset(
    num_samples: int,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    one_object_fraction: float = 0.25,
):
    """A `datasets.Dataset` of `num_samples` shapes-world drawings with columns `image` (`Image()`) and `caption`.

    Args:
        num_samples (`int`): number of rows.
        seed (`int`): rows are samples `0 .. num_samples - 1` of the stream `seed` (see `generate_sample`), so a
            larger dataset with the same seed starts with the same rows.
        split (`str`): one of `SPLITS`; `"train"` never contains a held-out caption, `"held_out"` only those.
        image_size (`int`): side of the square images (>= 32).
        one_object_fraction (`float`): share of one-object captions.
    """
    from datasets import Dataset, Features, Value, concatenate_datasets
    from datasets import Image as ImageFeature

    if not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"`num_samples` must be a non-negative integer, got {num_samples!r}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    features = Features({"image": ImageFeature(), "caption": Value("string")})
    # In chunks, so that only one chunk of PIL images is held at a time (the table keeps the encoded PNGs).
    chunks = []
    for start in range(0, max(num_samples, 1), _DATASET_CHUNK_SIZE):
        samples = [
            generate_sample(index, seed, split, image_size, one_object_fraction)
            for index in range(start, min(start + _DATASET_CHUNK_SIZE, num_samples))
        ]
        images, captions = [image for image, _ in samples], [caption for _, caption in samples]
        chunks.append(Dataset.from_dict({"image": images, "caption": captions}, features=features))
    return chunks[0] if len(chunks) == 1 else concatenate_datasets(chunks)


_DATASET_CHUNK_SIZE = 10_000


__all__ = [
    "BACKGROUND_COLOR",
    "COLORS",
    "HELD_OUT_ARRANGEMENTS",
    "HELD_OUT_COMBINATIONS",
    "HELD_OUT_PAIRINGS",
    "PALETTE",
    "RELATIONS",
    "SHAPES",
    "SPLITS",
    "PlacedObject",
    "ShapesCaption",
    "all_captions",
    "caption_split",
    "generate_sample",
    "is_held_out",
    "make_shapes_dataset",
    "parse_caption",
    "render_caption",
    "render_layout",
    "sample_layout",
    "shape_mask",
    "split_captions",
]
