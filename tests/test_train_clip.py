"""scripts/train_clip.py's contrastive loss and hard negatives: caption neighbours (NegCLIP) and cell-swapped images,
the loss against CLIP's own, duplicate captions, and a resumed run with negatives matching a straight one."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from training_utils import (  # noqa: F401 (training_environment: autouse fixture)
    Interrupt,
    assert_same_weights,
    interrupt_on_call,
    load_script,
    training_environment,
    training_logs,
)
from transformers import CLIPConfig, CLIPModel

from hf_dalle.data import is_held_out, make_shapes_dataset, split_captions


train_clip = load_script("train_clip")

TINY_CLIP = json.dumps(
    {
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
        "projection_dim": 32,
    }
)


def test_caption_neighbors_differ_in_one_word_or_one_swap():
    captions = [
        "a red circle above a blue square",
        "a blue circle above a red square",  # colours trade places
        "a red square above a blue circle",  # shapes trade places
        "a red circle below a blue square",  # one word: the relation
        "a blue square below a red circle",  # the same scene as the first, but four words differ
        "a red circle above a blue square",  # a repeat counts once
        "a red circle",
        "a big red circle",  # one word more
    ]
    neighbors = train_clip.caption_neighbors(captions)
    assert neighbors["a red circle above a blue square"] == [
        "a blue circle above a red square",
        "a red circle below a blue square",
        "a red square above a blue circle",
    ]
    assert neighbors["a blue square below a red circle"] == []
    assert neighbors["a red circle"] == [] and neighbors["a big red circle"] == []
    assert neighbors["a red circle below a blue square"] == ["a red circle above a blue square"]


def test_shapes_negatives_are_training_captions_only():
    neighbors = train_clip.caption_neighbors(split_captions("train"))
    assert sorted(neighbors) == sorted(split_captions("train"))
    assert not any(is_held_out(other) for others in neighbors.values() for other in others)
    assert all(len(others) >= 5 for others in neighbors.values())  # every caption gets hard negatives
    assert all(a in neighbors[b] for a in neighbors for b in neighbors[a])  # symmetric
    # "a red square ..." is held out, so the shape swap of this caption is not a negative; the relation flip is.
    assert "a red square above a yellow circle" not in neighbors["a red circle above a yellow square"]
    assert "a red circle below a yellow square" in neighbors["a red circle above a yellow square"]


def test_contrastive_loss_is_clips_own_without_repeats_or_negatives():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1},
        vision_config={
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
            "image_size": 16, "patch_size": 8,
        },
        projection_dim=8,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    inputs = {"input_ids": torch.randint(0, 99, (4, 5)), "pixel_values": torch.randn(4, 3, 16, 16)}
    output = model(**inputs, return_loss=True)
    loss = train_clip.contrastive_loss(output.logits_per_image, list("abcd"), list("abcd"))
    torch.testing.assert_close(loss, output.loss)


def test_contrastive_loss_does_not_punish_a_repeated_caption():
    # Both images carry caption "x"; each scores the other's copy highest. CLIP's own loss calls that wrong.
    logits = torch.tensor([[0.0, 10.0], [10.0, 0.0]])
    assert train_clip.contrastive_loss(logits, ["x", "x"], ["x", "x"]) == 0
    assert train_clip.contrastive_loss(logits, ["x", "y"], ["x", "y"]) > 9


def test_hard_negatives_are_scored_against_the_images_only():
    captions, texts = ["x", "y"], ["x", "y", "x'", "y'"]
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    confused = logits.clone()
    confused[0, 2] = 8.0  # image 0 prefers its hard negative
    base = train_clip.contrastive_loss(logits, captions, texts)
    worse = train_clip.contrastive_loss(confused, captions, texts)
    image_loss_increase = (torch.logsumexp(confused[0], 0) - torch.logsumexp(logits[0], 0)) / 2
    torch.testing.assert_close(worse - base, image_loss_increase / 2)  # half of the mean over 2 images, half of CE
    # A negative equal to another image's caption is that image's right answer, not a wrong one.
    assert train_clip.contrastive_loss(logits, captions, ["x", "y", "y", "x"]) < base


def test_hard_negative_images_are_scored_against_the_captions_only():
    captions = ["x", "y"]
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 0.0]])  # row 2: a hard negative image
    confused = logits.clone()
    confused[2, 0] = 8.0  # caption 0 prefers the negative image
    base = train_clip.contrastive_loss(logits, captions, captions)
    worse = train_clip.contrastive_loss(confused, captions, captions)
    text_loss_increase = torch.logsumexp(confused[:, 0], 0) - torch.logsumexp(logits[:, 0], 0)
    torch.testing.assert_close(worse - base, text_loss_increase / 4)
    # Without the negative image's row the loss is the plain two-pair loss minus that row's share of the softmax.
    assert train_clip.contrastive_loss(logits[:2], captions, captions) < base


def test_a_negative_image_is_not_wrong_for_the_caption_it_shows():
    captions = ["x", "y"]
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 9.0]])  # row 2: a negative image that caption "y" prefers
    loss = train_clip.contrastive_loss(logits, captions, captions, [None])
    # Showing "y" (a redrawn object can make another training caption), it is y's right answer: only "x" counts it.
    shown = train_clip.contrastive_loss(logits, captions, captions, ["y"])
    assert shown < loss
    expected_text_loss = (
        torch.logsumexp(logits[:, 0], 0) - logits[0, 0] + torch.logsumexp(logits[:2, 1], 0) - logits[1, 1]
    ) / 2
    expected_image_loss = (torch.logsumexp(logits[0], 0) - logits[0, 0] + torch.logsumexp(logits[1], 0) - 5) / 2
    torch.testing.assert_close(shown, (expected_text_loss + expected_image_loss) / 2)


def test_swap_cells_replaces_one_or_two_whole_cells_where_images_differ():
    torch.manual_seed(0)
    pixels = torch.zeros(5, 3, 32, 32)
    for k in range(5):  # one bright 8x8 square per image, each in another place
        pixels[k, :, 8 * (k % 4) : 8 * (k % 4) + 8, 8 * (k // 4) : 8 * (k // 4) + 8] = 1.0
    original = pixels.clone()
    swapped = train_clip.swap_cells(pixels, 4, 8, torch.Generator().manual_seed(0))
    assert swapped.shape == (4, 3, 32, 32) and torch.equal(pixels, original)  # a copy; the batch is untouched
    again = train_clip.swap_cells(pixels, 4, 8, torch.Generator().manual_seed(0))
    assert torch.equal(swapped, again)  # seeded
    for k in range(4):
        partner = pixels[k + 1]
        changed = (swapped[k] != pixels[k]).any(0)
        cells = changed.view(4, 8, 4, 8).any(3).any(1)  # which 8x8 cells changed
        assert 1 <= int(cells.sum()) <= 2
        assert torch.equal(swapped[k][:, changed], partner[:, changed])  # taken from the next image
        for i, j in cells.nonzero().tolist():  # whole cells
            rows, columns = slice(8 * i, 8 * i + 8), slice(8 * j, 8 * j + 8)
            assert torch.equal(swapped[k, :, rows, columns], partner[:, rows, columns])


def clip_args(data, output_dir, *extra):
    return [
        "--dataset_name", str(data), "--resolution", "32", "--model_config", TINY_CLIP, "--max_text_length", "16",
        "--train_batch_size", "4", "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--logging_steps", "2",
        "--validation_steps", "4", "--num_validation_pairs", "8", "--seed", "3", "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """20 one-object drawings: with 15 distinct captions, most have neighbours in the data ("a red circle" and "a red
    triangle")."""
    path = tmp_path_factory.mktemp("clip_data") / "shapes"
    make_shapes_dataset(20, seed=4, image_size=32, one_object_fraction=1.0).save_to_disk(str(path))
    return path


def test_hard_negative_training_resumes_exactly_and_reports_its_accuracy(shapes_data, tmp_path, monkeypatch):
    common = ["--hard_negatives", "--cell_swap_negatives", "0.5", "--shape_swap_negatives", "0.5"]
    common += ["--max_train_steps", "6"]
    common += ["--checkpointing_steps", "3"]
    train_clip.main(clip_args(shapes_data, tmp_path / "straight", *common))
    logs = [json.loads(line) for line in (tmp_path / "straight" / "logs" / "metrics.jsonl").read_text().splitlines()]
    validations = [log for log in logs if "validation_hard_negative_accuracy" in log]
    assert [log["step"] for log in validations] == [4, 6]
    assert all(0 <= log["validation_hard_negative_accuracy"] <= 1 for log in validations)

    resumed = tmp_path / "resumed"
    interrupt_on_call(monkeypatch, CLIPModel, "forward", 6)  # step 5 (after 4 steps and a validation)
    with pytest.raises(Interrupt):
        train_clip.main(clip_args(shapes_data, resumed, *common))
    monkeypatch.undo()
    train_clip.main(clip_args(shapes_data, resumed, *common, "--resume_from_checkpoint", "latest"))
    assert_same_weights(tmp_path / "straight", resumed)
    assert training_logs(tmp_path / "straight")[-1]["loss"] == pytest.approx(training_logs(resumed)[-1]["loss"])

    # The negatives change what is learned: without them the same seed gives other weights.
    train_clip.main(clip_args(shapes_data, tmp_path / "plain", "--max_train_steps", "6"))
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "straight", tmp_path / "plain")


def test_hard_negatives_refuse_streaming_and_bad_shares(shapes_data, tmp_path):
    with pytest.raises(SystemExit):
        train_clip.parse_args(clip_args(shapes_data, tmp_path, "--hard_negatives", "--streaming"))
    with pytest.raises(SystemExit):
        train_clip.parse_args(clip_args(shapes_data, tmp_path, "--cell_swap_negatives", "1.5"))
    with pytest.raises(SystemExit):
        train_clip.parse_args(clip_args(shapes_data, tmp_path, "--shape_swap_negatives", "-0.5"))


def test_shape_swap_negatives_refuse_captions_outside_the_shapes_world_before_training(tmp_path):
    data = tmp_path / "other_captions"
    rows = make_shapes_dataset(4, seed=0, image_size=32, one_object_fraction=1.0)
    rows = rows.map(lambda row, i: {"caption": "a photo of a cat" if i == 2 else row["caption"]}, with_indices=True)
    rows.save_to_disk(str(data))
    message = "--shape_swap_negatives needs shapes-world captions: Caption 'a photo of a cat' does not fit"
    with pytest.raises(ValueError, match=message):
        train_clip.main(clip_args(data, tmp_path / "out", "--shape_swap_negatives", "0.5"))
    assert not list((tmp_path / "out").rglob("*.safetensors"))  # refused before training: no checkpoint, no model


@pytest.mark.parametrize("precision,implementation", [("no", "sdpa"), ("bf16", "eager")])
def test_cpu_half_precision_trains_with_eager_attention_and_saves_sdpa(
    shapes_data, tmp_path, monkeypatch, precision, implementation
):
    # The CPU flash kernel SDPA picks is several times slower backward in bf16; reranking keeps SDPA.
    seen, forward = set(), CLIPModel.forward

    def recording_forward(self, *args, **kwargs):
        seen.add(self.config._attn_implementation)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "forward", recording_forward)
    AcceleratorState._reset_state(reset_partial_state=True)  # its precision is process-wide
    try:
        train_clip.main(clip_args(shapes_data, tmp_path, "--max_train_steps", "2", "--mixed_precision", precision))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert seen == {implementation}
    assert CLIPModel.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
