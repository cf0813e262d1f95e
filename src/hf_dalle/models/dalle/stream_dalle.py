"""The layout of a DALL-E stream: `max_text_length` text positions (caption ids, then the pad id), then up to
`image_grid_size ** 2` image codes, code `c` written as `text_vocab_size + c`. Building streams and reading their codes
back, the checks of ids against the layout (run where ids enter the stream), and the rule on logits that follows from
it: a position only predicts the kind of token that comes next."""

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from .configuration_dalle import DalleConfig


def check_stream_end(config: DalleConfig, name: str, last_position: int) -> None:
    """Raise a ValueError if `name` reaches past the end of the stream."""
    if last_position >= config.max_sequence_length:
        raise ValueError(
            f"`{name}` reaches stream position {last_position}, but a DALL-E stream holds at most "
            f"{config.max_sequence_length} tokens (max_text_length={config.max_text_length} text positions + "
            f"image_grid_size**2={config.image_seq_length} image codes)."
        )


def check_stream_ids(
    config: DalleConfig,
    ids: torch.Tensor,
    name: str,
    positions: torch.Tensor | None = None,
    ignore_index: int | None = None,
) -> None:
    """Raise a ValueError naming the problem if `ids` (at stream `positions`, by default from 0 on) break the layout.
    Reads the result of every check back in one host sync."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.shape[1] == 0:
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"`{name}` must be a non-empty integer tensor of shape (batch, length), got {got}.")
    if positions is None:
        positions = torch.arange(ids.shape[1], device=ids.device)
    valid = ids != ignore_index if ignore_index is not None else torch.ones_like(ids, dtype=torch.bool)
    is_image_position = positions >= config.max_text_length
    is_image_id = ids >= config.text_vocab_size
    last_position, out_of_range, image_in_text, text_in_image = torch.stack(
        [
            positions[-1],
            (valid & ((ids < 0) | (ids >= config.vocab_size))).any(),
            (valid & is_image_id & ~is_image_position).any(),
            (valid & ~is_image_id & is_image_position).any(),
        ]
    ).tolist()
    check_stream_end(config, name, last_position)
    if out_of_range:
        raise ValueError(
            f"`{name}` holds ids outside [0, {config.vocab_size}) (text ids < {config.text_vocab_size}, "
            f"then image codes offset by {config.text_vocab_size})."
        )
    if image_in_text:
        raise ValueError(
            f"`{name}` holds an image code (id >= text_vocab_size={config.text_vocab_size}) at a text position "
            f"(< max_text_length={config.max_text_length}): pad the caption to max_text_length with the pad "
            f"token {config.text_pad_token_id} before the image codes, and use a tokenizer whose vocabulary fits "
            "in text_vocab_size."
        )
    if text_in_image:
        raise ValueError(
            f"`{name}` holds a text token id (< text_vocab_size={config.text_vocab_size}) at an image position "
            f"(>= max_text_length={config.max_text_length}): is the caption longer than max_text_length, or were "
            f"image codes not offset by text_vocab_size?"
        )


def check_attention_mask(attention_mask: torch.Tensor | None) -> None:
    """Empty text positions hold learned pad embeddings, so nothing in a DALL-E stream is ever masked out: a 2D
    `attention_mask` must be all ones. (A 4D mask or `BlockMask` that `generate` builds for a compilable cache is
    causal: the stream's own masks, which only allow fewer keys, replace it.)"""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 and not bool(attention_mask.all()):
        raise ValueError(
            "`attention_mask` must be all ones: DALL-E pads are inputs (each text position has its own learned pad "
            "embedding), not masked tokens. Leave `attention_mask` out."
        )


def build_stream(
    config: DalleConfig, text_input_ids: torch.LongTensor, image_codes: torch.LongTensor | None = None
) -> torch.LongTensor:
    """A stream from caption ids `[B, n <= max_text_length]`, right-padded with the pad id, then the optional image
    codes `[B, k]` (raster order) or `[B, h, w]`, offset by `text_vocab_size`."""
    if (
        not isinstance(text_input_ids, torch.Tensor)
        or text_input_ids.ndim != 2
        or text_input_ids.shape[1] > config.max_text_length
    ):
        raise ValueError(
            f"`text_input_ids` must be a tensor of shape (batch, <= max_text_length={config.max_text_length}), "
            f"got {tuple(text_input_ids.shape) if isinstance(text_input_ids, torch.Tensor) else text_input_ids!r}."
        )
    missing = config.max_text_length - text_input_ids.shape[1]
    stream = F.pad(text_input_ids, (0, missing), value=config.text_pad_token_id)
    if image_codes is not None:
        image_codes = image_codes.flatten(1)
        if image_codes.shape[0] != stream.shape[0] or image_codes.shape[1] > config.image_seq_length:
            raise ValueError(
                f"`image_codes` must hold at most image_grid_size**2={config.image_seq_length} codes for each of "
                f"the {stream.shape[0]} captions, got {tuple(image_codes.shape)}."
            )
        if image_codes.numel() and (image_codes.min() < 0 or image_codes.max() >= config.image_vocab_size):
            raise ValueError(f"`image_codes` must lie in [0, {config.image_vocab_size}) (the image vocabulary).")
        stream = torch.cat([stream, image_codes.to(stream) + config.text_vocab_size], dim=1)
    check_stream_ids(config, stream, "the stream")
    return stream


def image_codes_of_stream(config: DalleConfig, input_ids: torch.LongTensor) -> torch.LongTensor:
    """The image codes of complete streams `[B, max_sequence_length]` as a `[B, G, G]` grid."""
    if input_ids.ndim != 2 or input_ids.shape[1] != config.max_sequence_length:
        raise ValueError(
            f"`input_ids` must be complete streams of shape (batch, {config.max_sequence_length}), "
            f"got {tuple(input_ids.shape)}."
        )
    check_stream_ids(config, input_ids, "input_ids")
    codes = input_ids[:, config.max_text_length :] - config.text_vocab_size
    return codes.view(-1, config.image_grid_size, config.image_grid_size)


def mask_logits_by_position(logits: torch.Tensor, positions: torch.Tensor, config: DalleConfig) -> torch.Tensor:
    """Set the logits a stream position may not produce to the dtype's lowest value: the logits at position `p`
    predict the token at `p + 1`, which is an image code if `p + 1 >= max_text_length` and a text token otherwise.
    `logits`: `[..., len(positions), vocab_size]`. The lowest finite value rather than -inf, so that the difference
    of two masked logits (classifier-free guidance) stays finite instead of becoming NaN."""
    predicts_image = positions >= config.max_text_length - 1
    vocab_is_image = torch.arange(config.vocab_size, device=logits.device) >= config.text_vocab_size
    return logits.masked_fill(predicts_image[:, None] != vocab_is_image, torch.finfo(logits.dtype).min)


class DalleStreamLogitsProcessor(LogitsProcessor):
    """
    [`LogitsProcessor`] that keeps text tokens at text positions and image codes at image positions of a DALL-E
    stream (`input_ids` starting at stream position 0). [`DalleForImageGeneration`] already masks its logits this
    way; this processor is for scores that come from elsewhere (e.g. mixed for classifier-free guidance).
    """

    def __init__(self, config: DalleConfig):
        self.config = config

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        last_position = torch.tensor([input_ids.shape[1] - 1], device=scores.device)
        return mask_logits_by_position(scores, last_position, self.config)


__all__ = [
    "DalleStreamLogitsProcessor",
    "build_stream",
    "check_attention_mask",
    "check_stream_end",
    "check_stream_ids",
    "image_codes_of_stream",
    "mask_logits_by_position",
]
