"""Exponential moving average of the weights. The averaging is diffusers' `EMAModel`; saving is ours, because
`EMAModel.save_pretrained` cannot save transformers models: the averaged weights become the model's default weights
and the raw weights are saved beside them as the `non_ema` variant (`model.non_ema.safetensors`), the Hub's usual
layout for EMA checkpoints. [`averaged_weights`] swaps the average in wherever it is used (validation, saving)."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.training_utils import EMAModel
from transformers import PreTrainedModel


NON_EMA_VARIANT = "non_ema"


def create_ema(model: PreTrainedModel, decay: float) -> EMAModel:
    """The moving average of `model`'s parameters (updated with `ema.step(model.parameters())` after each optimizer
    step; `state_dict` / `load_state_dict` make it checkpointable)."""
    return EMAModel(model.parameters(), decay=decay, foreach=True)


@contextmanager
def averaged_weights(ema: EMAModel | None, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`with averaged_weights(ema, model):` the block sees `model` with the moving average's weights (what is saved
    and what validation should sample from); its own weights are back afterwards, also when the block raises. With
    `ema=None` the model is left as it is."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


def save_model(
    model: PreTrainedModel, save_directory: str | os.PathLike, ema: EMAModel | None = None, **kwargs
) -> None:
    """`model.save_pretrained(save_directory)`; with `ema`, the averaged weights are what `from_pretrained` loads and
    the raw weights go beside them (`from_pretrained(..., variant="non_ema")`)."""
    if ema is None:
        model.save_pretrained(save_directory, **kwargs)
        return
    model.save_pretrained(save_directory, variant=NON_EMA_VARIANT, **kwargs)
    with averaged_weights(ema, model):
        model.save_pretrained(save_directory, **kwargs)


__all__ = ["NON_EMA_VARIANT", "averaged_weights", "create_ema", "save_model"]
