"""The caption tokenizer of DALL-E: lowercased byte-level BPE (default vocabulary 16384), truncated to the text
length of the transformer (256)."""

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .models.dalle import DalleConfig


PAD_TOKEN = "<pad>"


class DalleTokenizer(PreTrainedTokenizerFast):
    """
    A fast tokenizer (a `tokenizers` byte-level BPE with an NFKC + lowercase normalizer) for the captions of
    [`DalleForImageGeneration`]. `<pad>` is id 0, which matches `DalleConfig.text_pad_token_id`; byte-level BPE
    needs no unknown token. `model_max_length` is the transformer's `max_text_length`.

    Train one with [`DalleTokenizer.train_from_texts`] (or `scripts/train_tokenizer.py`); save and load it with
    `save_pretrained` / `from_pretrained` (or `AutoTokenizer`).

    The model's text part of `input_ids` is exactly `max_text_length` ids, the caption truncated and then padded
    with `<pad>`: [`~DalleTokenizer.encode_captions`], or `tokenizer(captions, padding="max_length",
    truncation=True)`. The tokenizer returns no attention mask: DALL-E's pads are inputs, not masked positions.

    Example:

    ```python
    >>> from hf_dalle import DalleTokenizer
    >>> tokenizer = DalleTokenizer.train_from_texts(["a red circle", "a blue square above a red circle"],
    ...                                             vocab_size=300, max_text_length=8)
    >>> tokenizer.encode_captions(["A Red Circle"])  # [1, 8]: the caption's ids, then pad ids (0)
    ```
    """

    model_input_names = ["input_ids"]
    padding_side = "right"
    truncation_side = "right"

    @classmethod
    def train_from_texts(
        cls,
        texts: Iterable[str],
        vocab_size: int = 16384,
        max_text_length: int = 256,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> "DalleTokenizer":
        """
        Train a new BPE vocabulary of at most `vocab_size` tokens (the 256 byte symbols and `<pad>` included) on
        `texts` (any iterable of strings, e.g. a `datasets` column). A small corpus can yield fewer tokens than
        `vocab_size`: set `DalleConfig.text_vocab_size` to `len(tokenizer)` or larger.
        """
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise ValueError(
                f"`vocab_size` must be at least {len(alphabet) + 1} (the {len(alphabet)} byte symbols and <pad>), "
                f"got {vocab_size}."
            )
        if max_text_length < 1:
            raise ValueError(f"`max_text_length` must be a positive integer, got {max_text_length}.")
        backend = Tokenizer(models.BPE())
        backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        # Strip the space that `add_prefix_space` put before the first word.
        backend.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[PAD_TOKEN],
            initial_alphabet=alphabet,
            show_progress=show_progress,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer_object=backend, pad_token=PAD_TOKEN, model_max_length=max_text_length)

    def encode_captions(self, captions: str | list[str], max_length: int | None = None) -> torch.LongTensor:
        """
        The text part of the model's `input_ids`: `[len(captions), max_length]` ids, each caption normalized
        (lowercased), encoded with the tokenizer's special tokens if it has a post-processor (a converted ruDALL-E
        tokenizer adds BOS and EOS), cut to `max_length` (default `model_max_length`, the model's `max_text_length`)
        and padded with the pad token. Special tokens are added before the cut, so an over-long caption loses its
        last tokens, EOS included. An empty caption gives all pads (the unconditional stream), or its special tokens.
        """
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, (list, tuple)) or not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"`captions` must be a string or a non-empty list of strings, got {captions!r}.")
        max_length = max_length or self.model_max_length
        # verbose=False: no warning that a caption is longer than the model reads; it is cut below, on purpose (and
        # DallePipeline.prompt_warning says what is lost).
        ids = self(list(captions), add_special_tokens=True, verbose=False)["input_ids"]
        return torch.tensor([row[:max_length] + [self.pad_token_id] * (max_length - len(row)) for row in ids])


AutoTokenizer.register(DalleConfig, tokenizer_class=DalleTokenizer)

__all__ = ["DalleTokenizer"]
