import importlib.util
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from hf_dalle import DalleConfig, DalleForImageGeneration, DalleTokenizer


SENTENCES = [
    "a red circle",
    "a blue square above a red circle",
    "a green triangle to the left of a yellow square",
    "a purple circle below an orange triangle",
    "a yellow square to the right of a blue circle",
] * 4


def load_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_tokenizer.py"
    spec = importlib.util.spec_from_file_location("train_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer() -> DalleTokenizer:
    return DalleTokenizer.train_from_texts(SENTENCES, vocab_size=300, max_text_length=8)


def test_trained_vocabulary_has_pad_at_zero_and_merges(tokenizer):
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 0
    assert 257 < len(tokenizer) <= 300  # the 256 byte symbols, <pad>, and merges of the corpus
    assert len(tokenizer("a red circle")["input_ids"]) == 3  # whole words after merging
    assert tokenizer.decode(tokenizer("a red circle")["input_ids"]) == "a red circle"
    assert tokenizer.model_max_length == 8
    assert "attention_mask" not in tokenizer("a red circle")


def test_captions_are_lowercased(tokenizer):
    assert tokenizer("A RED Circle")["input_ids"] == tokenizer("a red circle")["input_ids"]
    assert tokenizer.decode(tokenizer("A Blue SQUARE")["input_ids"]) == "a blue square"


def test_encode_captions_truncates_and_pads_to_the_text_length(tokenizer):
    long_caption = "a green triangle to the left of a yellow square above a red circle"
    ids = tokenizer.encode_captions(["A red circle", long_caption, ""])
    assert ids.dtype == torch.long and ids.shape == (3, 8)
    short = tokenizer("a red circle")["input_ids"]
    assert ids[0].tolist() == short + [0] * (8 - len(short))
    assert ids[1].tolist() == tokenizer(long_caption)["input_ids"][:8]
    assert (ids[2] == 0).all()  # an empty caption is all pads: the unconditional stream
    assert tokenizer.encode_captions("a red circle", max_length=4).shape == (1, 4)


def test_encode_captions_rejects_bad_input(tokenizer):
    with pytest.raises(ValueError, match="`captions` must be a string or a non-empty list of strings"):
        tokenizer.encode_captions([])
    with pytest.raises(ValueError, match="`captions` must be a string or a non-empty list of strings"):
        tokenizer.encode_captions(["a red circle", 3])
    with pytest.raises(ValueError, match="`vocab_size` must be at least 257"):
        DalleTokenizer.train_from_texts(SENTENCES, vocab_size=100)


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    for loaded in (DalleTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(loaded) is DalleTokenizer
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert loaded.model_max_length == 8 and loaded.pad_token_id == 0
        assert torch.equal(loaded.encode_captions(SENTENCES[:5]), tokenizer.encode_captions(SENTENCES[:5]))
        assert loaded("A Purple Circle")["input_ids"] == tokenizer("a purple circle")["input_ids"]


def test_encoded_captions_are_the_text_part_of_the_model_stream(tokenizer):
    config = DalleConfig(
        text_vocab_size=len(tokenizer),
        image_vocab_size=16,
        max_text_length=8,
        image_grid_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    model = DalleForImageGeneration(config).eval()
    text = tokenizer.encode_captions(["a red circle", "a blue square above a red circle"])
    stream = model.generate(text, do_sample=True, max_new_tokens=4)
    assert torch.equal(stream[:, :8], text)
    assert model.image_codes_from_ids(stream).shape == (2, 2, 2)


def test_train_tokenizer_script_from_text_file_and_dataset(tmp_path):
    script = load_script()
    text_file = tmp_path / "captions.txt"
    text_file.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    script.main(
        [
            "--text_file",
            str(text_file),
            "--output_dir",
            str(tmp_path / "from_text"),
            "--vocab_size",
            "300",
            "--max_text_length",
            "16",
        ]
    )
    from_text = DalleTokenizer.from_pretrained(tmp_path / "from_text")
    assert from_text.model_max_length == 16 and 257 < len(from_text) <= 300
    assert not list(tmp_path.glob(".from_text.tmp*"))  # the temporary folder is gone

    Dataset.from_dict({"text": [s.upper() for s in SENTENCES]}).save_to_disk(tmp_path / "dataset")
    script.main(
        [
            "--dataset_name",
            str(tmp_path / "dataset"),
            "--caption_column",
            "text",
            "--output_dir",
            str(tmp_path / "from_dataset"),
            "--vocab_size",
            "300",
            "--max_text_length",
            "16",
        ]
    )
    from_dataset = DalleTokenizer.from_pretrained(tmp_path / "from_dataset")
    assert from_dataset.get_vocab() == from_text.get_vocab()  # same captions, lowercased: same merges

    with pytest.raises(SystemExit, match="no column 'caption'"):
        script.main(["--dataset_name", str(tmp_path / "dataset"), "--output_dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="is not a file"):
        script.main(["--text_file", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "x")])
