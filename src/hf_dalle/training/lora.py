"""LoRA (Hu et al. 2021) on the DALL-E transformer with `peft`, through transformers' PEFT integration: only the
low-rank adapters train, `save_pretrained` then writes `adapter_model.safetensors` + `adapter_config.json`, and
`DallePipeline.load_lora_weights` / `DalleForImageGeneration.load_adapter` load them back."""

from torch import nn

from ..models.dalle import DalleForImageGeneration


# The attention and MLP projections of every block.
LORA_TARGET_MODULES = ("qkv_proj", "out_proj", "fc_in", "fc_out")


def add_lora_adapter(
    model: DalleForImageGeneration,
    rank: int,
    alpha: float | None = None,
    target_modules: list[str] | tuple[str, ...] = LORA_TARGET_MODULES,
    dropout: float = 0.0,
    adapter_name: str = "default",
):
    """
    Add a LoRA adapter of rank `rank` to the `nn.Linear` layers of `model` whose name ends with one of
    `target_modules` (default: the attention and MLP projections), freeze every other parameter, and return the
    `peft.LoraConfig`. `alpha` defaults to `rank` (adapter scale `alpha / rank` = 1). The adapter's B matrices
    start at zero, so the model's outputs are unchanged until it trains.
    """
    from peft import LoraConfig  # optional dependency: only LoRA training and loading need it

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer, got {rank!r}.")
    linear_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = sorted(set(target_modules) - linear_names)
    if not target_modules or unknown:
        raise ValueError(
            f"LoRA target modules {unknown or list(target_modules)} are not Linear layers of this model; "
            f"choose from {sorted(linear_names)}."
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        target_modules=list(target_modules),
    )
    model.add_adapter(config, adapter_name=adapter_name)
    return config


__all__ = ["LORA_TARGET_MODULES", "add_lora_adapter"]
