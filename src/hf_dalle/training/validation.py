"""Validation of models trained on the shapes world: the share of images that the pixel judge accepts."""

from PIL import Image

from ..data.shapes import parse_caption
from ..data.shapes_judge import judge_image


def shapes_judge_accuracy(images: list[Image.Image], captions: list[str]) -> float:
    """The share of `images` that the shapes-world pixel judge finds to show their caption (captions must follow the
    shapes grammar, e.g. "a red circle above a blue square")."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"Need one caption per image and at least one image, got {len(images)} and {len(captions)}.")
    parsed = [parse_caption(caption) for caption in captions]  # a ValueError names a caption outside the grammar
    return sum(judge_image(image, caption).correct for image, caption in zip(images, parsed)) / len(images)


__all__ = ["shapes_judge_accuracy"]
