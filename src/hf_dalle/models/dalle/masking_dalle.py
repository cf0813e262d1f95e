"""The attention masks of the DALL-E stream: one rule per attention type says which earlier positions a position may
attend to, and [`DalleAttentionMasks`] turns the rules into what a layer attends with in a given call (rows of a
dense mask, a flex attention `BlockMask`, or, at a sparse decode step, the few keys to read)."""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_dalle import DalleConfig


# An image rule says whether the image code at raster index `query` may attend to the one at raster index `key`
# (integer tensors of any broadcastable shapes, or the scalars flex attention's mask functions receive); every rule is
# causal in raster order. With `G = image_grid_size`, `h = conv_kernel_size // 2`:


def full_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Every earlier code and itself."""
    return key <= query


def row_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`query - key <= G`: the code itself and the `G` codes before it (the paper's "previous grid + 1 tokens": the
    rest of its row to the left and the previous row from its own column on)."""
    return (key <= query) & (query - key <= config.image_grid_size)


def column_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`(query - key) % G == 0`: the same column in earlier rows, and itself."""
    return (key <= query) & ((query - key) % config.image_grid_size == 0)


def conv_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`query - key = dr * G + dc` with `0 <= dr <= h`, `-h <= dc <= h`: the causal half of the `conv_kernel_size` x
    `conv_kernel_size` neighbourhood centred on the code, laid over the raster sequence, so near the left and right
    edges it wraps around onto the neighbouring row."""
    offset, half = query - key, config.conv_kernel_size // 2
    in_kernel = offset <= half  # dr = 0: the code itself and the `h` codes before it
    for kernel_row in range(1, half + 1):
        in_kernel = in_kernel | ((offset - kernel_row * config.image_grid_size).abs() <= half)
    return (key <= query) & in_kernel


def clipped_conv_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """`|row(query) - row(key)| <= h` and `|col(query) - col(key)| <= h`: the causal half of a true 2D
    `conv_kernel_size` x `conv_kernel_size` window, cut at the image edges (ruDALL-E v3's convolutional mask)."""
    grid, half = config.image_grid_size, config.conv_kernel_size // 2
    row_distance = (query // grid - key // grid).abs()
    column_distance = (query % grid - key % grid).abs()
    return (key <= query) & (row_distance <= half) & (column_distance <= half)


def torus_conv_image_attention(config: DalleConfig, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Rows and columns at most `h` apart around the image's edges (on a torus: the bottom rows see the top ones),
    still causal in raster order (ruDALL-E v2's convolutional mask)."""
    grid, half = config.image_grid_size, config.conv_kernel_size // 2
    row_offset, column_offset = (query // grid - key // grid) % grid, (query % grid - key % grid) % grid
    rows_near = (row_offset <= half) | (row_offset >= grid - half)
    columns_near = (column_offset <= half) | (column_offset >= grid - half)
    return (key <= query) & rows_near & columns_near


# `config.conv_window` -> the rule of `"conv"` layers.
CONV_WINDOW_RULES = {
    "raster": conv_image_attention,
    "clipped": clipped_conv_image_attention,
    "torus": torus_conv_image_attention,
}

IMAGE_ATTENTION_RULES: dict[str, Callable[[DalleConfig, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "full": full_image_attention,
    "row": row_image_attention,
    "column": column_image_attention,
    "conv": conv_image_attention,
}


def stream_attention_rule(config: DalleConfig, kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mask function `(query, key) -> may attend` over stream positions for attention type `kind`: text queries
    attend causally to text, image queries attend to all text and to image codes by `IMAGE_ATTENTION_RULES[kind]`
    (`"conv"`: by `CONV_WINDOW_RULES[config.conv_window]`). The first `config.mask_text_length` positions count as
    text (all text positions unless `config.image_mask_offset` moves the grid's start earlier)."""
    image_rule = CONV_WINDOW_RULES[config.conv_window] if kind == "conv" else IMAGE_ATTENTION_RULES[kind]
    text_length = config.mask_text_length

    def may_attend(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        image_pair = (query >= text_length) & (key >= text_length)
        return torch.where(image_pair, image_rule(config, query - text_length, key - text_length), key <= query)

    return may_attend


def build_attention_masks(config: DalleConfig, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The boolean attention masks (`True` = may attend) of the full stream, one `[S, S]` matrix per attention type used
    by `config` (`S = max_sequence_length`), from [`stream_attention_rule`]."""
    positions = torch.arange(config.max_sequence_length, device=device)
    return {
        kind: stream_attention_rule(config, kind)(positions[:, None], positions[None, :])
        for kind in set(config.attention_types)
    }


# On a CPU, flex attention's block masks and inputs cover whole blocks of this size (see `build_flex_block_mask`); small
# blocks keep the padding of a decode step (one query) small.
FLEX_CPU_BLOCK_SIZE = 16


def build_flex_block_mask(config: DalleConfig, kind: str, positions: torch.Tensor, key_length: int):
    """The flex attention `BlockMask` of attention type `kind` for queries at stream `positions` over `key_length`
    keys, from [`stream_attention_rule`]: on a GPU, flex attention skips the blocks it masks out.

    On a CPU the mask covers whole blocks (`FLEX_CPU_BLOCK_SIZE`), the extra queries repeating the last position: the
    compiled CPU kernel of torch 2.13 returns wrong values or NaN for a block cut short by the end of the
    queries or keys, depending on what it compiled before. [`cpu_flex_attention_forward`] pads the queries and keys to
    the mask's lengths; every rule is causal, so no real query attends to a padded key."""
    from torch.nn.attention.flex_attention import create_block_mask  # torch >= 2.5, only for flex attention

    may_attend = stream_attention_rule(config, kind)
    block_size = 128  # create_block_mask's default
    if positions.device.type == "cpu":
        block_size = FLEX_CPU_BLOCK_SIZE
        whole_blocks = -(-len(positions) // block_size) * block_size
        positions = torch.cat([positions, positions[-1:].expand(whole_blocks - len(positions))])
        key_length = -(-key_length // block_size) * block_size

    def mask_mod(batch_idx, head_idx, query_idx, key_idx):
        return may_attend(positions[query_idx], key_idx)

    return create_block_mask(
        mask_mod,
        B=None,
        H=None,
        Q_LEN=len(positions),
        KV_LEN=key_length,
        device=positions.device,
        BLOCK_SIZE=block_size,
    )


def cpu_flex_attention_forward(module, query, key, value, block_mask, **kwargs):
    """transformers' flex attention on a CPU, with queries and keys padded with zeros to the whole blocks that
    `block_mask` covers (see [`build_flex_block_mask`]); the padded queries' outputs are dropped."""
    query_length, key_length = block_mask.shape[-2:]

    def pad(states: torch.Tensor, length: int) -> torch.Tensor:
        return F.pad(states, (0, 0, 0, length - states.shape[2]))

    flex_attention = ALL_ATTENTION_FUNCTIONS["flex_attention"]
    output, weights = flex_attention(
        module, pad(query, query_length), pad(key, key_length), pad(value, key_length), block_mask, **kwargs
    )
    return output[:, : query.shape[2]], weights


@dataclass(frozen=True)
class DecodeStepKeys:
    """
    The keys that one image query may attend to under one attention type, as views of a cache that holds stream
    positions `0 .. p` in order, in place of a mask row over all of them: every text position, then the stream
    positions `image_keys` (a slice, strided for column attention), of which `image_mask` (`None`: all) marks the
    allowed ones. A decode step thus reads the few keys of its row, column or neighbourhood, not the whole prefix.
    """

    text_length: int
    image_keys: slice
    image_mask: torch.Tensor | None = None


def decode_step_keys(config: DalleConfig, position: int, mask_row: torch.Tensor) -> DecodeStepKeys:
    """The [`DecodeStepKeys`] of the query at image stream `position` whose row of `build_attention_masks(config)` is
    `mask_row`: the allowed image keys as one slice if they are evenly spaced (a row, a column, full attention),
    else the window from the first to the last with its mask (a convolutional neighbourhood)."""
    text_length = config.mask_text_length
    allowed = (mask_row[text_length : position + 1].nonzero().squeeze(1) + text_length).tolist()
    first, last = allowed[0], allowed[-1]
    steps = {b - a for a, b in zip(allowed, allowed[1:])}
    if len(steps) <= 1:
        return DecodeStepKeys(text_length, slice(first, last + 1, steps.pop() if steps else 1))
    window = slice(first, last + 1)
    return DecodeStepKeys(text_length, window, mask_row[window])


def decode_step_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: DecodeStepKeys,
    scaling: float,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one query position over the text keys and the `attention_mask.image_keys` of `key` / `value`
    (views, no copy): the scores of both parts share one softmax (in float32), so this equals the attention with the
    full mask row."""
    keys = attention_mask
    text, image = slice(0, keys.text_length), keys.image_keys
    query = query * scaling
    text_scores = query @ key[:, :, text].transpose(-1, -2)
    image_scores = query @ key[:, :, image].transpose(-1, -2)
    if keys.image_mask is not None:
        image_scores = image_scores.masked_fill(~keys.image_mask, float("-inf"))
    weights = torch.cat([text_scores, image_scores], dim=-1).softmax(-1, dtype=torch.float32).to(value.dtype)
    output = weights[..., text] @ value[:, :, text] + weights[..., keys.text_length :] @ value[:, :, image]
    return output.transpose(1, 2), None


class LayerAttention(NamedTuple):
    """What the layers of one attention type attend with in one call: an attention function of transformers'
    interface (`(module, query, key, value, mask, scaling=..., dropout=...) -> (output, weights)`) and its mask."""

    function: Callable
    mask: Any  # a boolean tensor, a flex attention `BlockMask` or `DecodeStepKeys`


class DalleAttentionMasks:
    """
    The attention masks of one model: built from [`stream_attention_rule`] once per device (a plain cache rather than
    buffers, so meta-device construction and checkpoint loading never see them) and answered per call, for each
    attention type of the config, as a [`LayerAttention`]:

    - `"flex_attention"`: a `BlockMask` of the call's positions ([`build_flex_block_mask`]), on a CPU through
      [`cpu_flex_attention_forward`];
    - `"sdpa"` at an inference decode step (one query at `decode_position`) over a cache of exactly the positions
      before it, where its type allows few of them: the [`DecodeStepKeys`] to read, through
      [`decode_step_attention_forward`];
    - otherwise: the positions' rows of the dense `[S, S]` mask, `[1, 1, len(positions), key_length]` (slots past the
      stream, as in a longer `StaticCache`, are never attended to).
    """

    def __init__(self, config: DalleConfig):
        self.config = config
        self._dense: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._decode_steps: dict[torch.device, list[dict[str, DecodeStepKeys | None]]] = {}

    def dense(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The `[S, S]` boolean masks of [`build_attention_masks`] on `device`, built on first use."""
        if device not in self._dense:
            self._dense[device] = build_attention_masks(self.config, device)
        return self._dense[device]

    def decode_steps(self, device: torch.device) -> list[dict[str, DecodeStepKeys | None]]:
        """Per stream position, per attention type, the [`DecodeStepKeys`] of a decode step there, or `None` where one
        mask over the whole prefix is as cheap: at text positions, and where the step would still read more than a
        third of the prefix (a conv window counts whole: skipping fewer keys than that does not repay the extra
        kernels). Built for every position at once from the masks on the CPU, so that no decode step waits for the
        device."""
        if device not in self._decode_steps:
            config, cpu_masks = self.config, self.dense(torch.device("cpu"))
            steps = [dict.fromkeys(cpu_masks) for _ in range(config.max_sequence_length)]
            for position in range(config.max_text_length, config.max_sequence_length):
                for kind, mask in cpu_masks.items():
                    keys = decode_step_keys(config, position, mask[position])
                    read = keys.text_length + len(range(position + 1)[keys.image_keys])
                    if 3 * read <= position + 1:
                        image_mask = keys.image_mask.to(device) if keys.image_mask is not None else None
                        steps[position][kind] = replace(keys, image_mask=image_mask)
            self._decode_steps[device] = steps
        return self._decode_steps[device]

    def __call__(
        self,
        attention_function: Callable,
        implementation: str,
        positions: torch.Tensor,
        key_length: int,
        decode_position: int | None = None,
    ) -> dict[str, LayerAttention]:
        """Per attention type, what its layers attend with for the queries at stream `positions` over `key_length` key
        slots, under the call's attention `implementation`, whose function is `attention_function`."""
        config, device = self.config, positions.device
        if implementation == "flex_attention":
            function = cpu_flex_attention_forward if device.type == "cpu" else attention_function
            return {
                kind: LayerAttention(function, build_flex_block_mask(config, kind, positions, key_length))
                for kind in set(config.attention_types)
            }
        sparse = {}
        if implementation == "sdpa" and decode_position is not None and key_length == decode_position + 1:
            sparse = self.decode_steps(device)[decode_position]
        attention = {}
        for kind, mask in self.dense(device).items():
            if sparse.get(kind) is not None:
                attention[kind] = LayerAttention(decode_step_attention_forward, sparse[kind])
                continue
            if key_length > mask.shape[1]:  # a StaticCache longer than the stream: its extra slots stay hidden
                mask = F.pad(mask, (0, key_length - mask.shape[1]))
            rows = mask[:, :key_length].index_select(0, positions)
            attention[kind] = LayerAttention(attention_function, rows[None, None])
        return attention


__all__ = [
    "CONV_WINDOW_RULES",
    "IMAGE_ATTENTION_RULES",
    "DalleAttentionMasks",
    "DecodeStepKeys",
    "LayerAttention",
    "build_attention_masks",
    "build_flex_block_mask",
    "cpu_flex_attention_forward",
    "decode_step_attention_forward",
    "decode_step_keys",
    "stream_attention_rule",
]
