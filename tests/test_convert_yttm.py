"""YouTokenToMe BPE models as `tokenizers` tokenizers (hf_dalle.conversion.convert_yttm): the ids of youtokentome
itself on models it trains (parity, in the reference venv), and the file format and its errors without it."""

import random

import pytest
from reference_models import import_reference

from hf_dalle.conversion.convert_yttm import convert_yttm_to_tokenizer, read_yttm_model


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


def test_a_surrogate_code_point_is_refused(tmp_path):
    path = write_model(tmp_path / "surrogate.model", {"\u2581": 4, "\ud800": 5}, [])
    with pytest.raises(ValueError, match=r"character code 55296 is not a Unicode character"):
        convert_yttm_to_tokenizer(path)


def test_merges_that_spell_more_than_the_file_holds_are_refused(tmp_path):
    """30 lines that double a token line after line would build a token of 2**30 characters: refused from the lengths
    the rules spell, before any string is built."""
    rules = [(5, 5, 6)] + [(token, token, token + 1) for token in range(6, 35)]
    path = write_model(tmp_path / "bomb.model", {"\u2581": 4, "a": 5}, rules)
    assert path.stat().st_size < 400
    with pytest.raises(ValueError, match=r"its merge rules spell more than \d+ characters in all by rule 1\d"):
        read_yttm_model(path)


# Parity with youtokentome itself (reference venv).

WORDS = [
    "кошка", "собака", "красный", "круг", "над", "слева", "cat", "dog", "a", "the", "naïve", "straße", "日本語",
    "東京", "😀", "🐈‍⬛", "xxxxx", "abab", "ёлка", "Ёж", "1234", "e.g.", "(скобки)", "—", "«кавычки»",
]  # fmt: skip
# Characters for the test strings: letters of the corpus, letters it never saw (unknown: one UNK per run), and every
# kind of space: YTTM's (ASCII whitespace, U+2581) and others it treats as letters (NBSP, ideographic space, U+0085).
ALPHABET = list("абвгдекошсaboxyz日本😀") + list("QЖ€ŋ中") + [" ", "  ", "\t", "\n", "\r", "\x0b", "\x0c"]
ALPHABET += ["\u2581", "\xa0", "\u3000", "\x85", "\x1c", "\u200b", "<BOS>", "<UNK>", "<EOS>"]


def _test_strings(rng: random.Random) -> list[str]:
    strings = ["", " ", "\u2581", "\u2581\u2581a", "a\u2581b", " leading", "trailing \t\n", "<BOS> кошка <EOS>"]
    strings += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24))) for _ in range(300)]
    strings += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10))) for _ in range(200)]
    strings += [f"a{chr(code)}b" for code in range(256)]  # every character below 256 between two letters
    return strings


@pytest.mark.parity
@pytest.mark.parametrize("vocab_size,coverage", [(80, 1.0), (200, 1.0), (400, 0.98)])
def test_ids_match_youtokentome(tmp_path, vocab_size, coverage):
    yttm = import_reference("youtokentome")
    rng = random.Random(vocab_size)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(4000)) + "\n",
        encoding="utf-8",
    )
    model_path = str(tmp_path / "bpe.model")
    reference = yttm.BPE.train(data=str(corpus), model=model_path, vocab_size=vocab_size, coverage=coverage)
    tokenizer = convert_yttm_to_tokenizer(model_path)
    assert tokenizer.get_vocab_size() == reference.vocab_size()
    assert tokenizer.get_vocab() == {reference.id_to_subword(i): i for i in range(reference.vocab_size())}

    strings = _test_strings(rng)
    expected = reference.encode(strings)
    assert any(1 in ids for ids in expected), "the test strings must exercise unknown characters"
    mismatches = [
        (text, want, got.ids)
        for text, want, got in zip(strings, expected, tokenizer.encode_batch(strings, add_special_tokens=False))
        if want != got.ids
    ]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} strings differ, e.g. {mismatches[:3]}"
    # Decoding: YTTM turns each word mark back into a space and drops the first one.
    known = [ids for ids in expected if 1 not in ids]
    assert [tokenizer.decode(ids) for ids in known] == reference.decode(known)
