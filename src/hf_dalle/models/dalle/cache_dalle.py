"""The key/value cache that `DalleForImageGeneration.generate` uses by default: buffers of the whole stream, filled in
place, of which attention reads the written prefix."""

import copy

import torch
from transformers import GenerationConfig
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.generation import GenerationMode

from .configuration_dalle import DalleConfig


class PrefixLayer(CacheLayerMixin):
    """One layer's keys and values, written in place into buffers of `max_cache_len` positions allocated at the first
    update; `update` returns views of the filled prefix only. Attention thus reads exactly the positions written so
    far, with no per-step copy of the whole cache (a `DynamicLayer` concatenates) and no attention over empty slots
    (a `StaticLayer` returns all of them). The prefix grows every step, so it is not for `torch.compile`: use a
    `StaticCache` there."""

    is_croppable = True

    def __init__(self, max_cache_len: int):
        super().__init__()
        self.max_cache_len = max_cache_len
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch_size, num_heads = key_states.shape[:2]
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(batch_size, num_heads, self.max_cache_len, key_states.shape[-1])
        self.values = value_states.new_zeros(batch_size, num_heads, self.max_cache_len, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.max_cache_len:
            raise ValueError(f"The cache holds {self.max_cache_len} positions; this update would fill {end}.")
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_cache_len

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` positions (a negative count, as `DynamicLayer.crop` takes)."""
        if tokens_to_remove > 0:
            raise ValueError(f"`crop` takes minus the number of positions to remove, got {tokens_to_remove}.")
        self.length = max(self.length + tokens_to_remove, 0)

    def reset(self) -> None:
        super().reset()
        self.length = 0


class DallePrefixCache(Cache):
    """A [`PrefixLayer`] per layer, each sized for the whole stream by default (so that a cache which `generate`
    returned can be passed to the next `generate` call and continued). Same keys and values as a `DynamicCache`,
    without its per-step concatenation."""

    def __init__(self, config: DalleConfig, max_cache_len: int | None = None):
        max_cache_len = max_cache_len or config.max_sequence_length
        super().__init__(layers=[PrefixLayer(max_cache_len) for _ in range(config.num_hidden_layers)])


def generate_takes_prefix_cache(generation_config: GenerationConfig, kwargs: dict) -> bool:
    """Whether a `generate` call with `generation_config` and the keyword arguments `kwargs` may get a cache of
    [`PrefixLayer`]s as its default: the caller passed no cache (for example the one a previous call returned, to
    continue its streams), no `cache_implementation` and no custom decoding, and decodes greedily or by sampling (the
    modes that never reorder or roll back the cache)."""
    if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        return False
    if kwargs.get("custom_generate") is not None:
        return False
    config = copy.deepcopy(generation_config)
    config.update(**kwargs)
    return (
        config.use_cache is not False
        and config.cache_implementation in (None, "dynamic")
        and not config.is_assistant
        and config.get_generation_mode(kwargs.get("assistant_model"))
        in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)
    )


__all__ = ["DallePrefixCache", "PrefixLayer", "generate_takes_prefix_cache"]
