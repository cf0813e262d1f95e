"""DalleBartTokenizer: min-dalle's caption ids. Against min-dalle's own TextTokenizer (marker `parity`, in the
reference venv) on a few hundred tricky captions; without it, on hand-checked ids, the normaliser over all of Unicode,
saving and loading, and the errors."""

import json
import sys

import pytest
import torch
from min_dalle_reference import min_dalle_text_tokenizer, tricky_captions
from tokenizers import Regex, normalizers
from transformers import AutoTokenizer

from hf_dalle.testing_utils import CAPTIONS, train_bart_style_bpe
from hf_dalle.tokenization_dalle_bart import DalleBartTokenizer, demojize


VOCAB = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Ġ": 4, "a": 5, "b": 6, "Ġa": 7, "c": 8, "Ġab": 9, "_": 10}


@pytest.fixture
def tiny_files(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ a\nĠa b\n", encoding="utf-8")
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


@pytest.fixture
def trained_files(tmp_path):
    corpus = [c.replace("a ", "an ") for c in CAPTIONS] * 3 + ["a comfy chair that looks like an avocado"] * 3
    vocab, merges = train_bart_style_bpe(corpus, vocab_size=320)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


def test_ids_follow_min_dalles_rules(tiny_files):
    tokenizer = DalleBartTokenizer.from_min_dalle_files(*tiny_files)
    ids = tokenizer.encode_captions(["AB b", "", "  a   ab  ", "a\tb", "<s> c", "ab " * 70]).tolist()
    pads = lambda n: [1] * n  # noqa: E731
    assert ids[0] == [0, 9, 4, 6, 2, *pads(59)]  # "Ġab", then "Ġ" "b" (no merge makes "Ġb")
    assert ids[1] == [0, 2, *pads(62)]  # empty caption: <s> </s>
    assert ids[2] == [0, 7, 9, 2, *pads(60)]  # repeated, leading and trailing spaces separate nothing more
    assert ids[3] == [0, 7, 3, 6, 2, *pads(59)]  # a tab is no BPE symbol: <unk>, and it splits no word
    assert ids[4] == [0, 4, 3, 3, 3, 4, 8, 2, *pads(56)]  # "<s>" in a caption is text ("<", "s", ">" unknown here)
    assert ids[5] == [0, *[9] * 63]  # cut to 64: the over-long caption loses </s>
    assert tokenizer("ab")["attention_mask"] == [1, 1, 1]


def test_emoji_become_words_before_the_backend(tiny_files, monkeypatch):
    tokenizer = DalleBartTokenizer.from_min_dalle_files(*tiny_files)
    assert demojize("a 🐱 b") == "a cat_face b"
    # "🐱" -> "cat_face": "Ġ" then one id per character ("c", "a", "_" known, the others <unk>).
    assert tokenizer.encode_captions(["🐱"])[0, :11].tolist() == [0, 4, 8, 5, 3, 10, 3, 5, 8, 3, 2]
    assert tokenizer.tokenize("ab 🐱")[:3] == ["Ġab", "Ġ", "c"]
    # Every emoji holds a non-ASCII character, so ASCII captions need no emoji package.
    import emoji

    assert not any(e.isascii() for e in emoji.EMOJI_DATA)
    monkeypatch.setitem(sys.modules, "emoji", None)
    assert tokenizer.encode_captions(["ab"])[0, :3].tolist() == [0, 9, 2]
    with pytest.raises(ImportError, match="pip install emoji"):
        tokenizer.encode_captions(["ab 🐱"])


def test_lowercase_and_ascii_match_python_over_all_of_unicode():
    """The backend's lowercase + non-ASCII removal equals Python's `lower().encode("ascii", errors="ignore")` for
    every code point (a character's lowercase does not depend on its neighbours, except the final sigma, which is
    not ASCII either way)."""
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    backend = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\x{00}-\x{7F}]"), "")])
    assert backend.normalize_str(text) == text.lower().encode("ascii", errors="ignore").decode()


def test_save_and_load(trained_files, tmp_path):
    tokenizer = DalleBartTokenizer.from_min_dalle_files(*trained_files)
    captions = ["A comfy chair that looks like an avocado", "a 🐱 on a RED circle", "x" * 300]
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is DalleBartTokenizer
    assert torch.equal(reloaded.encode_captions(captions), tokenizer.encode_captions(captions))
    assert tokenizer.decode(tokenizer("a comfy chair")["input_ids"], skip_special_tokens=True) == "a comfy chair"


def test_file_errors(tiny_files, tmp_path):
    vocab_file, merges_file = tiny_files
    (tmp_path / "bad_vocab.json").write_text(json.dumps({**VOCAB, "<pad>": 7, "Ġa": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="<s> 0, <pad> 1, </s> 2"):
        DalleBartTokenizer.from_min_dalle_files(tmp_path / "bad_vocab.json", merges_file)
    (tmp_path / "not_json.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not a JSON vocabulary"):
        DalleBartTokenizer.from_min_dalle_files(tmp_path / "not_json.json", merges_file)
    (tmp_path / "bad_merges.txt").write_text("#version: 0.2\nĠ a\nĠa b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: expected two subwords"):
        DalleBartTokenizer.from_min_dalle_files(vocab_file, tmp_path / "bad_merges.txt")
    (tmp_path / "foreign_merges.txt").write_text("#version: 0.2\nx y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="does not fit"):
        DalleBartTokenizer.from_min_dalle_files(vocab_file, tmp_path / "foreign_merges.txt")


def test_a_merges_file_without_final_newline_loses_its_last_merge_as_in_min_dalle(tiny_files, tmp_path):
    vocab_file, _ = tiny_files
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ a\nĠa b", encoding="utf-8")
    tokenizer = DalleBartTokenizer.from_min_dalle_files(vocab_file, tmp_path / "merges.txt")
    assert tokenizer.tokenize("ab") == ["Ġa", "b"]


@pytest.mark.parity
def test_ids_equal_min_dalles_text_tokenizer(trained_files):
    vocab_file, merges_file = trained_files
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    reference = min_dalle_text_tokenizer(vocab, merges_file.read_text(encoding="utf-8").split("\n")[1:-1])
    tokenizer = DalleBartTokenizer.from_min_dalle_files(vocab_file, merges_file)
    captions = tricky_captions(400, seed=0)
    ids = tokenizer.encode_captions(captions)
    expected = []
    for caption in captions:
        tokens = reference.tokenize(caption)[:64]  # as generate_raw_image_stream cuts and pads them
        expected.append(tokens + [1] * (64 - len(tokens)))
    mismatches = [(c, a, b) for c, a, b in zip(captions, ids.tolist(), expected) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(captions)} captions differ, e.g. {mismatches[:2]}"
    expected = torch.tensor(expected)
    # The captions cover what they are meant to: over-long ones (no </s> at the end), unknown symbols, emoji words.
    assert (expected[:, -1] != 1).any() and (expected == 3).any()
    assert sum(demojize(c) != c for c in captions) > 50
