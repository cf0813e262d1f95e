import itertools

import numpy as np
import pytest
from PIL import Image

from hf_dalle.data.shapes import (
    BACKGROUND_COLOR,
    COLORS,
    HELD_OUT_ARRANGEMENTS,
    HELD_OUT_COMBINATIONS,
    HELD_OUT_PAIRINGS,
    OBJECT_SIZE_RANGE,
    PALETTE,
    RELATION_GAP,
    RELATIONS,
    SHAPES,
    all_captions,
    caption_split,
    generate_sample,
    is_held_out,
    make_shapes_dataset,
    parse_caption,
    redraw_with_another_shape,
    render_caption,
    render_layout,
    sample_layout,
    shape_mask,
    split_captions,
)
from hf_dalle.data.shapes_judge import any_of_k_accuracy, best_of_k_accuracy, detect_objects, judge_image


def _objects_of(caption):
    return parse_caption(caption).objects


OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def _mirror(caption):
    """The same scene described from the other object: "a X left of a Y" -> "a Y right of a X"."""
    parsed = parse_caption(caption)
    (c1, s1), (c2, s2) = parsed.objects
    return f"a {c2} {s2} {OPPOSITE[parsed.relation]} a {c1} {s1}"


# ----------------------------------------------------------------------------------------------------- captions


def test_grammar_enumeration_and_round_trip():
    one, two = all_captions(1), all_captions(2)
    assert len(one) == len(COLORS) * len(SHAPES) == 18
    # Ordered pairs of objects with different colors, times the relations.
    assert len(two) == 18 * 15 * len(RELATIONS) == 1080
    assert len(set(one + two)) == 1098
    for caption in one + two:
        parsed = parse_caption(caption)
        assert str(parsed) == caption == caption.lower()
        assert len(parsed.objects) == (1 if caption in one else 2)
    assert parse_caption("a blue circle above a red square").objects == (("blue", "circle"), ("red", "square"))
    assert parse_caption("  A Blue Circle  to the LEFT of a red square").relation == "to the left of"


@pytest.mark.parametrize(
    "caption, message",
    [
        ("a pink circle", "color"),
        ("a red hexagon", "shape"),
        ("a red circle next to a blue square", "relation"),
        ("a red circle to the left of", "expected 'a {color} {shape}'"),
        ("a red circle above a red square", "different colors"),
        ("a red circle above a blue square above a green circle", "unexpected words"),
        ("", "expected 'a {color} {shape}'"),
    ],
)
def test_parse_rejects_captions_outside_the_grammar(caption, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_caption(caption)


def test_held_out_split_is_documented_and_leaves_every_part_seen():
    train = split_captions("train")
    held_out = split_captions("held_out")
    assert set(train).isdisjoint(held_out) and len(train) + len(held_out) == 1098
    assert set(train) == {caption for caption in all_captions() if not is_held_out(caption)}
    train_objects = {obj for caption in train for obj in _objects_of(caption)}
    # Held-out pairings never occur in training, in either position; everything else does.
    assert train_objects == set(itertools.product(COLORS, SHAPES)) - set(HELD_OUT_PAIRINGS)
    # Every color and every shape is still seen (with at least two shapes / four colors): zero-shot is possible.
    for color in COLORS:
        assert len({shape for c, shape in train_objects if c == color}) >= 2
    for shape in SHAPES:
        assert len({color for color, s in train_objects if s == shape}) >= 4
    assert split_captions("held_out_pairing", 1) == [
        f"a {c} {s}" for c, s in itertools.product(COLORS, SHAPES) if (c, s) in HELD_OUT_PAIRINGS
    ]

    train_pairs = {frozenset(_objects_of(caption)) for caption in train if " a " in caption[2:]}
    for combination in HELD_OUT_COMBINATIONS:
        assert frozenset(combination) not in train_pairs
        assert all(obj not in HELD_OUT_PAIRINGS for obj in combination)
    # A held-out arrangement and its mirror are held out, while the same two objects meet in training otherwise.
    for first, relation, second in HELD_OUT_ARRANGEMENTS:
        caption = f"a {first[0]} {first[1]} {relation} a {second[0]} {second[1]}"
        assert caption_split(caption) == caption_split(_mirror(caption)) == "held_out_arrangement"
        other = [r for r in RELATIONS if r not in (relation, OPPOSITE[relation])]
        assert all(f"a {first[0]} {first[1]} {r} a {second[0]} {second[1]}" in train for r in other)
    kinds = {caption_split(caption) for caption in held_out}
    assert kinds == {"held_out_pairing", "held_out_combination", "held_out_arrangement"}
    with pytest.raises(ValueError, match="Unknown split"):
        split_captions("validation")


# ----------------------------------------------------------------------------------------------------- rendering


def test_samples_are_deterministic_per_seed_and_index():
    first = make_shapes_dataset(6, seed=3)
    again = make_shapes_dataset(6, seed=3)
    longer = make_shapes_dataset(9, seed=3)
    other = make_shapes_dataset(6, seed=4)
    for i in range(6):
        image, caption = generate_sample(i, seed=3)
        for dataset in (first, again, longer):
            assert dataset[i]["caption"] == caption
            np.testing.assert_array_equal(np.asarray(dataset[i]["image"]), np.asarray(image))
    assert [row["caption"] for row in other] != [row["caption"] for row in first]
    np.testing.assert_array_equal(
        np.asarray(render_caption("a red circle", seed=7)), np.asarray(render_caption("a red circle", seed=7))
    )


def test_dataset_features_and_splits():
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    dataset = make_shapes_dataset(40, seed=0, split="held_out", image_size=48, one_object_fraction=0.5)
    assert dataset.features == Features({"image": ImageFeature(), "caption": Value("string")})
    assert len(dataset) == 40
    assert all(is_held_out(caption) for caption in dataset["caption"])
    image = dataset[0]["image"]
    assert isinstance(image, Image.Image) and image.size == (48, 48) and image.mode == "RGB"
    counts = {n: sum(len(_objects_of(c)) == n for c in dataset["caption"]) for n in (1, 2)}
    assert counts[1] > 5 and counts[2] > 5
    # A split without one-object captions still yields rows, all with two objects.
    combinations = make_shapes_dataset(10, seed=0, split="held_out_combination", one_object_fraction=1.0)
    assert all(caption_split(c) == "held_out_combination" for c in combinations["caption"])
    with pytest.raises(ValueError, match="Unknown split"):
        make_shapes_dataset(2, split="test")
    with pytest.raises(ValueError, match="image_size"):
        make_shapes_dataset(2, image_size=20)


def test_training_samples_never_show_held_out_captions_or_pairings():
    for index in range(3000):
        rng_caption = generate_sample(index, seed=11, split="train", image_size=32)[1]
        objects = _objects_of(rng_caption)
        assert not any(obj in HELD_OUT_PAIRINGS for obj in objects)
        if len(objects) == 2:
            assert frozenset(objects) not in {frozenset(c) for c in HELD_OUT_COMBINATIONS}
        assert caption_split(rng_caption) == "train"
    # Pixels agree: the judge never sees a held-out pairing drawn in a training image.
    for index in range(200):
        image, _ = generate_sample(index, seed=11, split="train")
        assert not any((obj.color, obj.shape) in HELD_OUT_PAIRINGS for obj in detect_objects(image))


def test_layout_rules_palette_gap_and_unambiguous_relation():
    size = 64
    axes = {"to the left of": (0, 1), "to the right of": (0, -1), "above": (1, 1), "below": (1, -1)}
    allowed = {BACKGROUND_COLOR, *PALETTE.values()}
    rng = np.random.default_rng(0)
    for caption in split_captions("all", 2)[::7]:
        layout = sample_layout(caption, rng, size)
        for obj in layout:
            assert OBJECT_SIZE_RANGE[0] * size <= obj.size <= OBJECT_SIZE_RANGE[1] * size
            assert 0 <= obj.center_x - obj.size / 2 and obj.center_x + obj.size / 2 <= size
            assert 0 <= obj.center_y - obj.size / 2 and obj.center_y + obj.size / 2 <= size
        first, second = layout
        axis, sign = axes[parse_caption(caption).relation]
        centers = [(first.center_x, first.center_y), (second.center_x, second.center_y)]
        along = sign * (centers[1][axis] - centers[0][axis])
        across = abs(centers[1][1 - axis] - centers[0][1 - axis])
        assert along >= (first.size + second.size) / 2 + RELATION_GAP * size - 1e-9
        assert across <= 0.5 * along + 1e-9
        masks = [shape_mask(o.shape, o.center_x, o.center_y, o.size, size) for o in layout]
        assert not (masks[0] & masks[1]).any() and masks[0].sum() > 0 and masks[1].sum() > 0
        pixels = np.asarray(render_layout(layout, size)).reshape(-1, 3)
        assert {tuple(p) for p in np.unique(pixels, axis=0)} <= allowed


def test_shapes_have_the_expected_geometry():
    triangle = shape_mask("triangle", 32, 32, 20, 64)
    rows = np.nonzero(triangle.any(1))[0]
    widths = triangle[rows].sum(1)
    assert widths[0] < widths[-1] and np.all(np.diff(widths) >= 0)  # upright: widest at the bottom
    assert abs(shape_mask("circle", 32, 32, 20, 64).sum() - np.pi * 100) < 15
    assert shape_mask("square", 32, 32, 20, 64).sum() == 400
    with pytest.raises(ValueError, match="Unknown shape"):
        shape_mask("star", 32, 32, 20, 64)


# ----------------------------------------------------------------------------------------------------- judge


def test_judge_accepts_every_caption_rendered():
    for index, caption in enumerate(all_captions()):
        result = judge_image(render_caption(caption, seed=index), caption)
        assert result.correct, (caption, result)
    for index in range(150):
        image, caption = generate_sample(index, seed=21, split="all", one_object_fraction=0.3)
        assert judge_image(image, caption).correct, caption
        image, caption = generate_sample(index, seed=22, split="all", image_size=96)
        assert judge_image(np.asarray(image), caption).correct, caption


def test_judge_accepts_slightly_blurred_images():
    from PIL import ImageFilter

    results = []
    for index in range(150):
        image, caption = generate_sample(index, seed=23, split="all")
        results.append(judge_image(image.filter(ImageFilter.GaussianBlur(1.0)), caption).correct)
        float_image = np.asarray(image).astype(np.float32) / 255
        assert judge_image(float_image, caption).correct
    assert np.mean(results) >= 0.98


def test_judge_rejects_wrong_images():
    for index in range(60):
        image, caption = generate_sample(index, seed=31, split="all", one_object_fraction=0.0)
        parsed = parse_caption(caption)
        (c1, s1), (c2, s2) = parsed.objects
        assert judge_image(image, caption).correct

        swapped = judge_image(image, f"a {c1} {s1} {OPPOSITE[parsed.relation]} a {c2} {s2}")
        assert (
            swapped.colors_correct
            and swapped.shapes_correct
            and swapped.relation_correct is False
            and not swapped.correct
        )

        other_color = next(c for c in COLORS if c not in (c1, c2))
        wrong_color = judge_image(image, f"a {other_color} {s1} {parsed.relation} a {c2} {s2}")
        assert not wrong_color.colors_correct and not wrong_color.correct

        for shape in SHAPES:
            if shape != s1:
                wrong_shape = judge_image(image, f"a {c1} {shape} {parsed.relation} a {c2} {s2}")
                assert wrong_shape.colors_correct and not wrong_shape.shapes_correct and not wrong_shape.correct

        # One object drawn, two asked for; two drawn, one asked for.
        single = render_caption(f"a {c1} {s1}", seed=index)
        missing = judge_image(single, caption)
        assert not missing.colors_correct and missing.relation_correct is False and not missing.correct
        assert not judge_image(image, f"a {c1} {s1}").correct

    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    blank = Image.new("RGB", (64, 64), BACKGROUND_COLOR)
    for caption in ("a red circle", "a blue square below a yellow triangle"):
        for image in (noise, blank):
            result = judge_image(image, caption)
            assert result.objects == () and not result.correct


def test_redrawn_shape_negatives_show_another_training_caption_in_place():
    rng = np.random.default_rng(0)
    changed_objects = set()
    for index, caption in enumerate(split_captions("train")):
        image = render_caption(caption, seed=index)
        redrawn = redraw_with_another_shape(image, caption, rng)
        if redrawn is None:
            continue
        new_image, new_caption = redrawn
        assert caption_split(new_caption) == "train"  # nothing held out is ever drawn
        old, new = parse_caption(caption), parse_caption(new_caption)
        assert old.relation == new.relation
        changes = [(a, b) for a, b in zip(old.objects, new.objects) if a != b]
        assert len(changes) == 1 and changes[0][0][0] == changes[0][1][0]  # one object, same color, other shape
        changed_objects.add(changes[0])
        assert judge_image(new_image, new_caption).correct and not judge_image(new_image, caption).correct
        # In place: the new shape's pixels lie inside the old object's box, the other object is untouched.
        old_pixels, new_pixels = np.asarray(image), np.asarray(new_image)
        color = PALETTE[changes[0][0][0]]
        ys, xs = np.nonzero((old_pixels == color).all(-1))
        new_ys, new_xs = np.nonzero((new_pixels == color).all(-1))
        assert ys.min() <= new_ys.min() and new_ys.max() <= ys.max()
        assert xs.min() <= new_xs.min() and new_xs.max() <= xs.max()
        outside_box = np.ones(old_pixels.shape[:2], dtype=bool)
        outside_box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = False
        assert np.array_equal(old_pixels[outside_box], new_pixels[outside_box])
    # Every seen (color, shape) is changed into every other seen shape of its color somewhere.
    seen = {(color, shape) for color in COLORS for shape in SHAPES} - set(HELD_OUT_PAIRINGS)
    assert changed_objects == {(a, b) for a in seen for b in seen if a[0] == b[0] and a != b}
    # Deterministic per generator; a drawing that does not show its caption is refused by name.
    image = render_caption("a red circle above a blue square", seed=1)
    first = redraw_with_another_shape(image, "a red circle above a blue square", np.random.default_rng(5))
    again = redraw_with_another_shape(image, "a red circle above a blue square", np.random.default_rng(5))
    assert first[1] == again[1] and np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    with pytest.raises(ValueError, match="no yellow pixel"):
        redraw_with_another_shape(image, "a yellow circle above a blue square", np.random.default_rng(0))


def test_judge_reports_what_it_sees():
    image = render_caption("a green triangle above a orange circle", seed=5)
    result = judge_image(image, "a green triangle above a orange circle")
    seen = {obj.color: obj for obj in result.objects}
    assert set(seen) == {"green", "orange"}
    assert seen["green"].shape == "triangle" and seen["orange"].shape == "circle"
    assert seen["green"].centroid[1] < seen["orange"].centroid[1]
    assert 0.4 < seen["green"].fill_ratio < 0.68 and 0.68 < seen["orange"].fill_ratio < 0.89
    with pytest.raises(ValueError, match="shape \\(height, width, 3\\)"):
        judge_image(np.zeros((64, 64)), "a red circle")
    with pytest.raises(ValueError, match="uint8 pixels or floats in \\[0, 1\\]"):
        judge_image(np.full((64, 64, 3), 200.0), "a red circle")


def test_best_of_k_accuracy_is_the_average_over_all_subsets():
    rng = np.random.default_rng(0)
    for n in (1, 4, 7):
        correct_by_score = [bool(c) for c in rng.integers(0, 2, n)]
        for k in range(1, n + 1):
            # Brute force: every k-subset of the candidates, reranked: is its best-scored (lowest index) correct?
            subsets = list(itertools.combinations(range(n), k))
            expected = sum(correct_by_score[min(subset)] for subset in subsets) / len(subsets)
            assert best_of_k_accuracy(correct_by_score, k) == pytest.approx(expected)
            expected_any = sum(any(correct_by_score[i] for i in subset) for subset in subsets) / len(subsets)
            assert any_of_k_accuracy(sum(correct_by_score), n, k) == pytest.approx(expected_any)
    assert best_of_k_accuracy([True, False, False], 1) == pytest.approx(1 / 3)
    assert best_of_k_accuracy([False, True, True], 3) == 0.0  # the reranker's pick is wrong
    with pytest.raises(ValueError, match="between 1 and the number of candidates"):
        best_of_k_accuracy([True, False], 3)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        any_of_k_accuracy(1, 2, 0)
