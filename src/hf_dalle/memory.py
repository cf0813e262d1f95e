"""How much memory a pipeline's transformer (DALL-E, or DALL·E Mini / Mega) needs for inference: weights and KV cache,
per storage dtype (`hf-dalle estimate-memory`)."""

from dataclasses import dataclass

import torch
from torch import nn

from .models.dalle import DalleConfig, DalleForImageGeneration
from .models.dalle_bart import DalleBartConfig, DalleBartForImageGeneration


# Bytes per stored weight, and per KV-cache entry (the compute dtype: int8 weight-only quantization keeps
# activations, and so the cache, in bf16).
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "int8": 1}
CACHE_BYTES = {"fp32": 4, "bf16": 2, "int8": 2}


@dataclass
class MemoryEstimate:
    dtype: str
    num_parameters: int
    parameter_bytes: int
    kv_cache_bytes_per_image: int
    batch_size: int

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.batch_size * self.kv_cache_bytes_per_image


def _count_parameters(config: DalleConfig | DalleBartConfig) -> tuple[int, int]:
    """All parameters of the transformer of `config`, and those of its blocks' `nn.Linear` weights. Built on the meta
    device (no storage) with one block of each kind (DALL-E: per attention type the config uses; DALL·E Mini / Mega:
    one encoder and one decoder layer): a block's parameters depend only on its kind, so the counts scale to any
    depth without building (or holding) thousands of modules."""
    if isinstance(config, DalleBartConfig):
        small = DalleBartConfig.from_dict({**config.to_dict(), "encoder_layers": 1, "decoder_layers": 1})
        with torch.device("meta"):
            model = DalleBartForImageGeneration(small)
        blocks = [
            (model.get_encoder().layers[0], config.encoder_layers),
            (model.get_decoder().layers[0], config.decoder_layers),
        ]
    else:
        types = list(dict.fromkeys(config.attention_types))
        small = DalleConfig.from_dict({**config.to_dict(), "num_hidden_layers": len(types), "attention_types": types})
        with torch.device("meta"):
            model = DalleForImageGeneration(small)
        blocks = [(block, config.attention_types.count(t)) for t, block in zip(types, model.model.layers)]
    outside_blocks = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for block, _ in blocks for p in block.parameters()
    )
    num_parameters = outside_blocks + sum(
        count * sum(p.numel() for p in block.parameters()) for block, count in blocks
    )
    linear_weights = sum(
        count * sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear)) for block, count in blocks
    )
    return num_parameters, linear_weights


def _kv_cache_entries(config: DalleConfig | DalleBartConfig) -> int:
    """Cached keys and values of one image: DALL-E's over the whole stream in every layer; DALL·E Mini / Mega's over
    the codes (self-attention) and the caption (cross-attention) in every decoder layer."""
    if isinstance(config, DalleBartConfig):
        return 2 * config.decoder_layers * (config.image_seq_length + config.max_text_length) * config.hidden_size
    return 2 * config.num_hidden_layers * config.max_sequence_length * config.hidden_size


def estimate_memory(
    config: DalleConfig | DalleBartConfig, batch_size: int = 1, dtypes=("fp32", "bf16", "int8")
) -> list[MemoryEstimate]:
    """
    Parameter memory and KV-cache memory of `DalleForImageGeneration(config)` or
    `DalleBartForImageGeneration(config)`, counted on the meta device (no weights are allocated, so the 12B default
    config, or any larger one, is fine). `"int8"` is weight-only
    quantization (`TorchAoConfig(Int8WeightOnlyConfig())`): the `nn.Linear` weights of the blocks take one byte each,
    everything else (embeddings, the output head, norms, biases) stays bf16; the per-row scales (< 0.1%) are not
    counted. The KV cache of one image is `2 (keys, values) * layers * max_sequence_length * hidden_size` entries
    (DALL·E Mini / Mega: `2 * decoder_layers * (image_seq_length + max_text_length) * hidden_size`); classifier-free
    guidance adds the same again for the unconditional rows.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
    unknown = [d for d in dtypes if d not in WEIGHT_BYTES]
    if unknown:
        raise ValueError(f"Unknown dtype(s) {unknown}: choose from {list(WEIGHT_BYTES)}.")
    # transformers' int8 weight-only quantizers skip the output head (`lm_head`): only the blocks' Linears shrink.
    num_parameters, block_linear_weights = _count_parameters(config)
    cache_entries = _kv_cache_entries(config)
    estimates = []
    for dtype in dtypes:
        if dtype == "int8":
            parameter_bytes = block_linear_weights + (num_parameters - block_linear_weights) * WEIGHT_BYTES["bf16"]
        else:
            parameter_bytes = num_parameters * WEIGHT_BYTES[dtype]
        estimates.append(
            MemoryEstimate(dtype, num_parameters, parameter_bytes, cache_entries * CACHE_BYTES[dtype], batch_size)
        )
    return estimates


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor occupies: a plain tensor's, or the sum of the inner tensors of a torchao quantized tensor
    subclass (int8 data + scales)."""
    names = getattr(tensor, "tensor_data_names", None)
    if names is None:
        return tensor.numel() * tensor.element_size()
    return sum(stored_bytes(getattr(tensor, name)) for name in names)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes the parameters of `module` occupy in memory (as stored: quantized weights count their int8 data)."""
    return sum(stored_bytes(p) for p in module.parameters())


def format_bytes(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.2f} MiB"


def format_estimates(config: DalleConfig | DalleBartConfig, estimates: list[MemoryEstimate]) -> str:
    batch_size = estimates[0].batch_size
    if isinstance(config, DalleBartConfig):
        model = (
            f"DALL·E Mini / Mega transformer: {estimates[0].num_parameters:,} parameters, {config.encoder_layers} + "
            f"{config.decoder_layers} layers, hidden {config.hidden_size}, {config.max_text_length} caption tokens, "
            f"{config.image_seq_length} codes"
        )
    else:
        model = (
            f"DALL-E transformer: {estimates[0].num_parameters:,} parameters, {config.num_hidden_layers} layers, "
            f"hidden {config.hidden_size}, stream of {config.max_sequence_length} tokens"
        )
    lines = [
        model,
        f"{'dtype':<6} {'parameters':>12} {'KV cache / image':>17} {f'total (batch {batch_size})':>18}",
    ]
    for e in estimates:
        lines.append(
            f"{e.dtype:<6} {format_bytes(e.parameter_bytes):>12} {format_bytes(e.kv_cache_bytes_per_image):>17} "
            f"{format_bytes(e.total_bytes):>18}"
        )
    lines.append(
        "int8 = weight-only (block Linear weights int8, the rest and the KV cache bf16). Classifier-free guidance "
        "doubles the KV cache (the unconditional rows)."
    )
    return "\n".join(lines)


__all__ = ["MemoryEstimate", "estimate_memory", "format_estimates", "parameter_bytes", "stored_bytes"]
