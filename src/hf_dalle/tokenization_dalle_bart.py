"""The caption tokenizer of DALL·E Mini / Mega: BART's byte-pair merges applied to captions as min-dalle reads them."""

import json
import os

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .models.dalle_bart import DalleBartConfig
from .tokenization_dalle import DalleTokenizer


BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<s>", "<pad>", "</s>", "<unk>"
# min-dalle's TextTokenizer starts every word with the byte-level BPE's space symbol, `chr(ord(" ") + 256)`.
WORD_PREFIX = "\u0120"  # "Ġ"


def demojize(text: str) -> str:
    """`emoji.demojize(text, delimiters=("", ""))`, as min-dalle writes emoji as words ("🐱" -> "cat_face"). Every
    emoji holds a non-ASCII character, so an ASCII caption is returned as it is without the `emoji` package."""
    if text.isascii():
        return text
    try:
        import emoji
    except ImportError:
        raise ImportError(
            "Captions with non-ASCII characters need the `emoji` package to be read as DALL·E Mini / Mega read them "
            "(emoji become words): `pip install emoji` (or `pip install hf_dalle[mega]`)."
        ) from None
    return emoji.demojize(text, delimiters=("", ""))


def read_min_dalle_merges(merges_file: str | os.PathLike) -> list[tuple[str, str]]:
    """The merges of a `merges.txt` as min-dalle reads them: the file split on newlines without its first line (the
    `#version` header) and its last element (empty when the file ends with a newline; a file without a final newline
    thus loses its last merge, as in min-dalle). Each line must be a pair of subwords."""
    with open(merges_file, encoding="utf-8") as file:
        lines = file.read().split("\n")[1:-1]
    merges = []
    for number, line in enumerate(lines, start=2):
        pair = tuple(line.split())
        if len(pair) != 2:
            raise ValueError(f"{os.fspath(merges_file)!r}, line {number}: expected two subwords, got {line!r}.")
        merges.append(pair)
    return merges


class DalleBartTokenizer(PreTrainedTokenizerFast):
    r"""
    The caption tokenizer of [`DalleBartForImageGeneration`] (DALL·E Mini / Mega): a `tokenizers` BPE with BART's
    vocabulary and merges that gives min-dalle's ids for every caption (min-dalle's `TextTokenizer`):

    1. emoji become their names (`emoji.demojize(text, delimiters=("", ""))`, in Python before the `tokenizers`
       backend: its normalizers have no emoji table; this needs the `emoji` package for non-ASCII captions, and the
       names are those of the installed `emoji` version, as in min-dalle),
    2. lowercase, then every non-ASCII character dropped (Python's `lower()` then `encode("ascii", errors="ignore")`:
       "İ" becomes "i"),
    3. words are what lies between single spaces (empty words dropped; tabs and newlines stay inside words and, being
       no byte-level BPE symbol, become `<unk>`), each word `"Ġ" + word` split by the merges into subwords, a subword
       outside the vocabulary `<unk>`,
    4. `<s> ids </s>`.

    [`~DalleBartTokenizer.encode_captions`] cuts that to `model_max_length` (64; an over-long caption loses its `</s>`,
    as in min-dalle) and pads with `<pad>` (id 1). Special-token spellings in a caption ("<s>") are text, as min-dalle
    reads them.

    dalle-mini itself (its `DalleBartProcessor`) differs: with `normalize_text=True` in the model's config it first
    rewrites captions with its own text normaliser (ftfy, unidecode, removal of some punctuation...), and it uses
    transformers' BART tokenizer (byte-level: accents and tabs become byte symbols instead of being dropped or
    `<unk>`). This tokenizer follows min-dalle, whose files the converter reads.

    Example:

    ```python
    >>> import json
    >>> from hf_dalle.tokenization_dalle_bart import DalleBartTokenizer
    >>> vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Ġ": 4, "a": 5, "b": 6, "Ġa": 7}
    >>> with open("vocab.json", "w") as f:
    ...     json.dump(vocab, f)
    >>> with open("merges.txt", "w") as f:
    ...     f.write("#version: 0.2\nĠ a\n")
    >>> tokenizer = DalleBartTokenizer.from_min_dalle_files("vocab.json", "merges.txt")
    >>> tokenizer.encode_captions(["A b"]).shape  # [1, 64]: 0, 7, 4, 6, 2, then pads (1)
    ```
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    @classmethod
    def from_min_dalle_files(
        cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, max_text_length: int = 64
    ) -> "DalleBartTokenizer":
        """The tokenizer of min-dalle's `vocab.json` and `merges.txt` (BART's files as dalle-mini ships them)."""
        try:
            with open(vocab_file, encoding="utf-8") as file:
                vocab = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{os.fspath(vocab_file)!r} is not a JSON vocabulary: {error}") from None
        if not isinstance(vocab, dict) or not all(
            isinstance(token, str) and isinstance(index, int) for token, index in vocab.items()
        ):
            raise ValueError(f"{os.fspath(vocab_file)!r} must map subwords to integer ids.")
        specials = {BOS_TOKEN: 0, PAD_TOKEN: 1, EOS_TOKEN: 2}
        found = {token: vocab.get(token) for token in [*specials, UNK_TOKEN]}
        if {token: found[token] for token in specials} != specials or found[UNK_TOKEN] is None:
            raise ValueError(
                f"{os.fspath(vocab_file)!r}: DALL·E Mini / Mega's vocabulary has <s> 0, <pad> 1, </s> 2 and an "
                f"<unk> (min-dalle pads and masks id 1); this one has {found}."
            )
        merges = read_min_dalle_merges(merges_file)
        try:
            model = models.BPE(vocab=vocab, merges=merges, unk_token=UNK_TOKEN, fuse_unk=False)
        except Exception as error:
            raise ValueError(
                f"{os.fspath(merges_file)!r} does not fit {os.fspath(vocab_file)!r} (every subword of a merge and "
                f"every merged subword must be in the vocabulary): {error}"
            ) from None
        backend = Tokenizer(model)
        backend.normalizer = normalizers.Sequence(
            [
                # Rust's per-character lowercase equals Python's lower() on everything that is ASCII afterwards
                # (checked over all of Unicode in the tests).
                normalizers.Lowercase(),
                normalizers.Replace(Regex(r"[^\x{00}-\x{7F}]"), ""),
                # split(" ") with empty words dropped: runs of spaces are one separator, none at the ends.
                normalizers.Replace(Regex(" +"), " "),
                normalizers.Replace(Regex(r"\A | \z"), ""),
            ]
        )
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_PREFIX, prepend_scheme="always")
        backend.decoder = decoders.Metaspace(replacement=WORD_PREFIX, prepend_scheme="always")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A {EOS_TOKEN}", special_tokens=[(BOS_TOKEN, 0), (EOS_TOKEN, 2)]
        )
        return cls(
            tokenizer_object=backend,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            pad_token=PAD_TOKEN,
            unk_token=UNK_TOKEN,
            model_max_length=max_text_length,
            split_special_tokens=True,
        )

    def _encode_plus(self, text, text_pair=None, *args, **kwargs):
        # Emoji to words in Python, before the backend (see the class docstring); every other step is the backend's.
        if isinstance(text, str):
            text = demojize(text)
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            text = [demojize(t) for t in text]
        return super()._encode_plus(text, text_pair, *args, **kwargs)

    def encode_captions(self, captions: str | list[str], max_length: int | None = None) -> torch.LongTensor:
        """The encoder's `input_ids`: `[len(captions), max_length]` (default `model_max_length`), each caption's
        `<s> ids </s>` cut to `max_length` and padded with `<pad>` (1), built as [`DalleTokenizer.encode_captions`]
        builds them."""
        return DalleTokenizer.encode_captions(self, captions, max_length)


AutoTokenizer.register(DalleBartConfig, tokenizer_class=DalleBartTokenizer)

__all__ = ["DalleBartTokenizer", "demojize", "read_min_dalle_merges"]
