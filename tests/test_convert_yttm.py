"""YouTokenToMe BPE models as `tokenizers` tokenizers (hf_dalle.convert_yttm): the file format, merge order, spaces,
unknowns and errors, on hand-written models."""

import pytest

from hf_dalle.convert_yttm import convert_yttm_to_tokenizer, read_yttm_model


def write_model(path, chars, rules, specials=(1, 0, 2, 3)):
    """A `bpe.model` in YTTM's layout: `chars` maps characters to ids, `rules` are `(x, y, z)`, specials in the file's
    order (unk, pad, bos, eos)."""
    lines = [f"{len(chars)} {len(rules)}"]
    lines += [f"{ord(char)} {token_id}" for char, token_id in chars.items()]
    lines += [f"{x} {y} {z}" for x, y, z in rules]
    lines.append(" ".join(str(i) for i in specials))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_model(tmp_path):
    # ids: 0-3 specials, 4 "▁", 5 "a", 6 "b"; rules: a+a -> 7 "aa", ▁+b -> 8 "▁b", ▁+7 -> 9 "▁aa".
    chars = {"\u2581": 4, "a": 5, "b": 6}
    return write_model(tmp_path / "bpe.model", chars, [(5, 5, 7), (4, 6, 8), (4, 7, 9)])


def test_merges_follow_rule_order_leftmost_first(small_model):
    tokenizer = convert_yttm_to_tokenizer(small_model)
    # "aaa": a+a merges leftmost first ("aa" + "a"), then ▁ + "aa" (rule 2); "b" alone: ▁b.
    assert tokenizer.encode("aaa").ids == [9, 5]
    assert tokenizer.encode("b").ids == [8]
    # Spaces (tab, newline, U+2581) separate words and vanish; NBSP is no YTTM space: an unknown character, one UNK
    # for the whole run "\xa0xy" (fused), after the word mark and "b".
    assert tokenizer.encode(" aa\t\u2581b\n").ids == [9, 8]
    assert tokenizer.encode("b\xa0xy").ids == [8, 1]
    assert tokenizer.encode("").ids == [] and tokenizer.encode(" \t ").ids == []
    # Specials are vocabulary entries, not added tokens: the text "<BOS>" is unknown characters, not BOS.
    assert tokenizer.encode("<BOS>").ids == [4, 1]
    assert tokenizer.token_to_id("<BOS>") == 2 and tokenizer.token_to_id("<PAD>") == 0
    assert tokenizer.decode([9, 5, 8]) == "aaa b"


def test_read_yttm_model_fields(small_model):
    model = read_yttm_model(small_model)
    assert model.char_ids == {"\u2581": 4, "a": 5, "b": 6}
    assert model.rules == [(5, 5, 7), (4, 6, 8), (4, 7, 9)]
    assert (model.unk_id, model.pad_id, model.bos_id, model.eos_id) == (1, 0, 2, 3)
    assert model.vocab_size == 10


def test_truncated_or_foreign_files_raise(tmp_path, small_model):
    truncated = tmp_path / "truncated.model"
    truncated.write_text(small_model.read_text().rsplit("\n", 3)[0])
    with pytest.raises(ValueError, match="not a complete YouTokenToMe BPE model.*3 rules"):
        read_yttm_model(truncated)
    foreign = tmp_path / "tokenizer.json"
    foreign.write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(ValueError, match="not a YouTokenToMe BPE model"):
        read_yttm_model(foreign)


def test_ids_that_spell_the_same_string_raise(tmp_path):
    # YTTM training can write two rules that build the same string ("ab" as 7 and as 8).
    chars = {"\u2581": 4, "a": 5, "b": 6}
    path = write_model(tmp_path / "dup.model", chars, [(5, 6, 7), (5, 6, 8)])
    with pytest.raises(ValueError, match="ids 7 and 8 both spell 'ab'"):
        convert_yttm_to_tokenizer(path)


def test_rules_with_undefined_ids_raise(tmp_path):
    path = write_model(tmp_path / "bad.model", {"\u2581": 4, "a": 5}, [(5, 9, 6)])
    with pytest.raises(ValueError, match=r"rule 0 \(5 \+ 9 -> 6\) merges an id that no earlier line defines"):
        convert_yttm_to_tokenizer(path)
