"""Data for training and evaluating: the procedural shapes world of the demo model and its pixel judge."""

from .shapes import (
    BACKGROUND_COLOR,
    COLORS,
    HELD_OUT_ARRANGEMENTS,
    HELD_OUT_COMBINATIONS,
    HELD_OUT_PAIRINGS,
    PALETTE,
    RELATIONS,
    SHAPES,
    SPLITS,
    ShapesCaption,
    all_captions,
    caption_split,
    generate_sample,
    is_held_out,
    make_shapes_dataset,
    parse_caption,
    redraw_with_another_shape,
    render_caption,
    split_captions,
)
from .shapes_judge import (
    DetectedObject,
    JudgeResult,
    any_of_k_accuracy,
    best_of_k_accuracy,
    detect_objects,
    judge_image,
)
