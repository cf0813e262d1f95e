"""LoRA (Hu et al. 2021) on the transformer of a pipeline (DALL-E's or DALL·E Mini / Mega's) with `peft`'s public integration API (`peft.functional`): only the
low-rank adapters train, [`save_lora_adapter`] writes `adapter_model.safetensors` + `adapter_config.json` (the layout
transformers' and peft's own `save_pretrained` write), and [`load_lora_adapter`] / `DallePipeline.load_lora_weights`
load them back from a folder or the Hub. (transformers' own PEFT integration would do the same, but from
transformers 5.24 on it refuses every peft release before 0.22.)"""

import math
import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from .hub_utils import hub_repo_id
from .io_utils import write_folder_atomically


ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
# The largest adapter scale (`lora_alpha / r`) an adapter may ask for: common ones are 1 to 32.
MAX_LORA_SCALE = 1e4


def add_lora_adapter(
    model: PreTrainedModel,
    rank: int,
    alpha: float | None = None,
    target_modules: list[str] | tuple[str, ...] | None = None,
    dropout: float = 0.0,
    adapter_name: str = "default",
):
    """
    Add a LoRA adapter of rank `rank` to the `nn.Linear` layers of `model` whose name ends with one of
    `target_modules` (default: the model class's `lora_target_modules`, its attention and feed-forward projections),
    freeze every other parameter, and return the `peft.LoraConfig` (also in `model.peft_config[adapter_name]`).
    `alpha` defaults to `rank` (adapter scale `alpha / rank` = 1). The adapter's B matrices start at zero, so the model's outputs are unchanged until it trains.
    """
    from peft import LoraConfig  # optional dependency: only LoRA training and loading need it
    from peft.functional import inject_adapter_in_model

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer, got {rank!r}.")
    if target_modules is None:
        target_modules = model.lora_target_modules
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
    inject_adapter_in_model(config, model, adapter_name=adapter_name)  # freezes all but the adapter
    return config


def save_lora_adapter(model: PreTrainedModel, save_directory: str | os.PathLike, adapter_name: str = "default"):
    """Write the adapter `adapter_name` of `model` (its config and weights only) into `save_directory`."""
    from peft.functional import get_peft_model_state_dict

    config = getattr(model, "peft_config", {}).get(adapter_name)
    if config is None:
        raise ValueError(f"The model has no LoRA adapter named {adapter_name!r} (add one with `add_lora_adapter`).")
    state_dict = get_peft_model_state_dict(model, adapter_name=adapter_name)
    config.base_model_name_or_path = model.config._name_or_path or None

    def write(folder: Path) -> None:
        config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / ADAPTER_WEIGHTS_NAME, {"format": "pt"})

    write_folder_atomically(save_directory, write)


def check_lora_config(config, adapter_weights: dict[str, torch.Tensor], source: str) -> None:
    """Refuse an adapter config that does not fit its weights, before anything is built from it: ranks (`r`,
    `rank_pattern`) above the weights' (peft allocates `r` rows per adapted layer), a scale `lora_alpha / r` (or
    `/ sqrt(r)` with rsLoRA) that is not a finite number in (0, `MAX_LORA_SCALE`], and `modules_to_save` (whole
    modules, which an adapter of this transformer never holds)."""
    ranks = {t.shape[0] for k, t in adapter_weights.items() if "lora_A" in k and t.ndim == 2}
    ranks |= {t.shape[1] for k, t in adapter_weights.items() if "lora_B" in k and t.ndim == 2}
    if not ranks:
        raise ValueError(f"The LoRA adapter {source} holds no LoRA weights (lora_A / lora_B matrices).")
    asked = [config.r, *(config.rank_pattern or {}).values()]
    if not all(type(rank) is int and 0 < rank <= max(ranks) for rank in asked):  # JSON numbers: int, float or bool
        raise ValueError(
            f"The LoRA adapter {source}: its config asks for ranks {asked}, but its weights are of rank "
            f"{sorted(ranks)}: the config is not the one of these weights."
        )
    alphas = [config.lora_alpha, *(config.alpha_pattern or {}).values()]
    if not all(type(alpha) in (int, float) and 0 < alpha < math.inf for alpha in alphas):
        raise ValueError(f"The LoRA adapter {source}: lora_alpha must be a finite number > 0, got {alphas}.")
    smallest = min(min(ranks), *asked)
    scale = max(alphas) / (math.sqrt(smallest) if config.use_rslora else smallest)
    if scale > MAX_LORA_SCALE:
        raise ValueError(
            f"The LoRA adapter {source}: lora_alpha {max(alphas)} at rank {smallest} scales the adapter by {scale:g}, "
            f"more than {MAX_LORA_SCALE:g}: its outputs would overflow."
        )
    if config.modules_to_save:
        raise ValueError(
            f"The LoRA adapter {source} lists modules_to_save {list(config.modules_to_save)}: whole modules, which "
            "an adapter of this transformer does not hold (its weights are LoRA matrices only)."
        )


def load_lora_adapter(
    model: PreTrainedModel,
    pretrained_model_name_or_path: str | os.PathLike,
    adapter_name: str = "default",
    **kwargs,
):
    """Load an adapter that [`save_lora_adapter`] (or peft / transformers' `save_pretrained`) wrote, from a folder or
    a Hub repo id (`kwargs`: `revision`, `token`, ... of `hf_hub_download`), into `model` and activate it. Its weights
    and config are checked before anything is built from them (non-finite weights, [`check_lora_config`]); an adapter
    that fails anywhere is refused with a `ValueError` and nothing of it is left in `model`."""
    from peft import LoraConfig
    from peft.functional import inject_adapter_in_model, set_adapter, set_peft_model_state_dict

    source = str(pretrained_model_name_or_path)
    if os.path.isdir(source):
        config_file, weights_file = (
            os.path.join(source, name) for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)
        )
        if not os.path.isfile(config_file):
            raise ValueError(
                f"{source} has no {ADAPTER_CONFIG_NAME}: not a LoRA adapter folder (train one with "
                "scripts/train_dalle.py --lora_rank R)."
            )
        if not os.path.isfile(weights_file):
            raise ValueError(f"The LoRA adapter {source} has no {ADAPTER_WEIGHTS_NAME}.")
    else:
        repo_id = hub_repo_id(source, "LoRA adapter")
        config_file, weights_file = (
            hf_hub_download(repo_id, name, **kwargs) for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)
        )
    try:
        adapter_weights = load_file(weights_file)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"The LoRA adapter's {weights_file} is not a safetensors file ({error}).") from None
    non_finite = [name for name, tensor in adapter_weights.items() if not torch.isfinite(tensor).all()]
    if non_finite:
        raise ValueError(
            f"The LoRA adapter {weights_file} has non-finite (NaN or infinite) weights in {non_finite[:3]}; "
            "it is not loaded."
        )
    try:
        config = LoraConfig.from_pretrained(os.path.dirname(config_file))
    except (OSError, ValueError, TypeError) as error:  # not JSON, unknown or ill-typed fields
        raise ValueError(f"The LoRA adapter's {config_file} is not a LoRA config ({error}).") from None
    check_lora_config(config, adapter_weights, source)
    config.inference_mode = True
    try:
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
        result = set_peft_model_state_dict(model, adapter_weights, adapter_name=adapter_name)
        # peft skips weights that match no module and leaves modules without weights at their initialisation: refuse
        # an adapter whose weights are not exactly the adapter's parameters.
        unmatched = sorted(key for key in result.missing_keys if "lora_" in key) + sorted(result.unexpected_keys)
        if unmatched:
            raise ValueError(f"the weights {unmatched[:3]} have no counterpart")
        set_adapter(model, adapter_name, inference_mode=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:  # peft's own complaints (size mismatches, ...)
        remove_lora_adapters(model, adapter_name)
        raise ValueError(
            f"The LoRA adapter {source} does not match this transformer ({' '.join(str(error).split())[:500]}); it is not "
            "loaded."
        ) from None


def remove_lora_adapters(model: PreTrainedModel, *adapter_names: str) -> None:
    """Remove the LoRA adapters `adapter_names` (default: every one) from `model`; without any it computes exactly
    its base weights' outputs again."""
    from peft.functional import delete_adapter

    for name in adapter_names or list(getattr(model, "peft_config", {})):
        delete_adapter(model, adapter_name=name, prefix="lora_")
        getattr(model, "peft_config", {}).pop(name, None)  # absent when injecting it failed
    if getattr(model, "peft_config", None) == {}:
        del model.peft_config  # no adapter left: the model as it was (peft warns when it finds an empty one)


__all__ = ["add_lora_adapter", "check_lora_config", "load_lora_adapter", "remove_lora_adapters", "save_lora_adapter"]
