"""YouTokenToMe (YTTM) BPE models as `tokenizers` tokenizers, without youtokentome installed.

ruDALL-E's caption tokenizer and ruCLIP's tokenizer are YTTM `bpe.model` files. YTTM's encoder
(`youtokentome/cpp/bpe.cpp`, `BaseEncoder::encode_sentence`) splits a sentence into words at "spaces" (C `isspace`
characters below 256, and U+2581), prefixes each word with U+2581, turns each run of characters outside its alphabet
into one unknown token, then merges pairs by rule order (leftmost first among equal rules). It does not normalize.
A `tokenizers` BPE with the rules as ranked merges, fused unknowns, and a pre-tokenizer that drops those spaces and adds
the U+2581 prefix gives the same ids; `youtokentome` itself is only needed to check that (tests/test_convert_yttm.py).

The file (`BPEState::dump`) is text: `n_chars n_rules`, then `n_chars` lines `codepoint id`, then `n_rules` lines
`x y z` (tokens `x` and `y` merge into `z`), then `unk_id pad_id bos_id eos_id` (-1 for an absent one).
"""

import os
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers


# YTTM's word-boundary mark, and its spelling of the special tokens (`youtokentome/cpp/utils.h`).
SPACE_TOKEN = "\u2581"
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<PAD>", "<UNK>", "<BOS>", "<EOS>"
# The most characters a model's tokens may spell in all, per byte of its file (real models: below 1).
MAX_SPELLED_PER_BYTE = 16
# C `isspace` in the "C" locale (YTTM's `is_space` looks at characters below 256 only), and U+2581.
YTTM_SPACES = "\t\n\v\f\r " + SPACE_TOKEN


@dataclass
class YttmBpeModel:
    """The contents of a YTTM `bpe.model`: the alphabet (character -> id), the merge rules `(x, y, z)` in order, and
    the special ids (`None` when the model has none)."""

    char_ids: dict[str, int]
    rules: list[tuple[int, int, int]]
    unk_id: int | None
    pad_id: int | None
    bos_id: int | None
    eos_id: int | None

    @property
    def special_ids(self) -> dict[str, int]:
        """Special token string -> id, for the specials the model has."""
        specials = {PAD_TOKEN: self.pad_id, UNK_TOKEN: self.unk_id, BOS_TOKEN: self.bos_id, EOS_TOKEN: self.eos_id}
        return {token: token_id for token, token_id in specials.items() if token_id is not None}

    @property
    def vocab_size(self) -> int:
        return len(self.char_ids) + len(self.rules) + len(self.special_ids)


def read_yttm_model(path: str | os.PathLike) -> YttmBpeModel:
    """Parse a YTTM `bpe.model` file (see the module docstring for its layout)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fields = text.split()
    try:
        numbers = [int(field) for field in fields]
    except ValueError as error:
        raise ValueError(f"{path} is not a YouTokenToMe BPE model (a text file of integers): {error}") from None
    if len(numbers) < 2 or numbers[0] < 1 or numbers[1] < 0:
        raise ValueError(f"{path} is not a YouTokenToMe BPE model: it must start with `n_chars n_rules`.")
    n_chars, n_rules = numbers[0], numbers[1]
    expected = 2 + 2 * n_chars + 3 * n_rules + 4
    if len(numbers) != expected:
        raise ValueError(
            f"{path} is not a complete YouTokenToMe BPE model: its header announces {n_chars} characters and "
            f"{n_rules} rules ({expected} numbers in all), but the file holds {len(numbers)} numbers."
        )
    position = 2
    char_ids = {}
    for _ in range(n_chars):
        codepoint, token_id = numbers[position], numbers[position + 1]
        position += 2
        if not 0 <= codepoint <= 0x10FFFF or 0xD800 <= codepoint <= 0xDFFF:
            raise ValueError(
                f"{path}: character code {codepoint} is not a Unicode character (a code point outside the "
                "surrogates U+D800-U+DFFF)."
            )
        char_ids[chr(codepoint)] = token_id
    rules = [tuple(numbers[position + 3 * i : position + 3 * i + 3]) for i in range(n_rules)]
    unk_id, pad_id, bos_id, eos_id = (None if i == -1 else i for i in numbers[position + 3 * n_rules :])
    # A rule's token spells its two parts together, so a few lines can double a token line after line (2**30
    # characters from 30 lines). Summed as lengths, before any string is built: a real model's tokens spell far fewer
    # characters than its file holds.
    lengths, spelled, budget = dict.fromkeys(char_ids.values(), 1), 0, MAX_SPELLED_PER_BYTE * len(text) + 4096
    for index, (x, y, z) in enumerate(rules):
        lengths[z] = lengths.get(x, len(UNK_TOKEN)) + lengths.get(y, len(UNK_TOKEN))
        spelled += lengths[z]
        if spelled > budget:
            raise ValueError(
                f"{path}: its merge rules spell more than {budget} characters in all by rule {index} (a token of "
                f"{lengths[z]}), over {MAX_SPELLED_PER_BYTE} per byte of the file: not a YouTokenToMe model."
            )
    if unk_id is None:
        raise ValueError(f"{path}: the model has no unknown-token id; YouTokenToMe always writes one.")
    if SPACE_TOKEN not in char_ids:
        raise ValueError(f"{path}: the alphabet lacks the word mark U+2581, which YouTokenToMe always includes.")
    return YttmBpeModel(char_ids, rules, unk_id=unk_id, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)


def yttm_vocabulary(model: YttmBpeModel) -> dict[str, int]:
    """Token string -> id for every id of `model`: the specials, the characters, and each rule's merged string. YTTM
    does not dedupe the strings of its tokens, while a `tokenizers` vocabulary must: a model in which two ids spell
    the same string cannot be converted exactly, and raises."""
    strings = {token_id: token for token, token_id in model.special_ids.items()}
    for char, token_id in model.char_ids.items():
        if token_id in strings:
            raise ValueError(f"YTTM model: id {token_id} is given to both {strings[token_id]!r} and {char!r}.")
        strings[token_id] = char
    for rule_index, (x, y, z) in enumerate(model.rules):
        if x not in strings or y not in strings:
            raise ValueError(
                f"YTTM model: rule {rule_index} ({x} + {y} -> {z}) merges an id that no earlier line defines."
            )
        if z in strings:
            raise ValueError(f"YTTM model: rule {rule_index} ({x} + {y} -> {z}) redefines id {z} ({strings[z]!r}).")
        strings[z] = strings[x] + strings[y]
    if sorted(strings) != list(range(len(strings))):
        raise ValueError(
            f"YTTM model: its {len(strings)} token ids are not the contiguous range 0..{len(strings) - 1}."
        )
    vocabulary = {}
    for token_id, token in sorted(strings.items()):
        if token in vocabulary:
            raise ValueError(
                f"YTTM model: ids {vocabulary[token]} and {token_id} both spell {token!r}; a `tokenizers` BPE needs "
                "one id per string, so this model cannot be converted exactly."
            )
        vocabulary[token] = token_id
    return vocabulary


def convert_yttm_to_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """
    A `tokenizers.Tokenizer` that encodes every string to the ids YouTokenToMe's `BPE(path).encode(...)` gives
    (without `bos`/`eos`: add those with a post-processor). The special tokens (`<PAD>`, `<UNK>`, `<BOS>`, `<EOS>`
    at the model's ids) are ordinary vocabulary entries, never added tokens: a caption that contains the text "<BOS>"
    is tokenized as text, as YTTM does. No normalizer is set; callers add theirs (e.g. lowercasing). Wrapped in a
    `PreTrainedTokenizerFast` that names these specials, pass `split_special_tokens=True` to keep that behaviour.
    """
    model = read_yttm_model(path)
    vocabulary = yttm_vocabulary(model)
    token_strings = {token_id: token for token, token_id in vocabulary.items()}
    merges = [(token_strings[x], token_strings[y]) for x, y, _ in model.rules]
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=merges, unk_token=UNK_TOKEN, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(f"[{YTTM_SPACES}]+"), behavior="removed"),
            pre_tokenizers.Metaspace(replacement=SPACE_TOKEN, prepend_scheme="always", split=False),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE_TOKEN, prepend_scheme="always", split=False)
    return tokenizer


__all__ = ["MAX_SPELLED_PER_BYTE", "YttmBpeModel", "convert_yttm_to_tokenizer", "read_yttm_model", "yttm_vocabulary"]
