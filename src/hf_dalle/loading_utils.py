"""Loading saved models and states so that damage is refused, never passed on.

- [`unpickling_reason`]: why `torch.load(weights_only=True)` refused a file, without torch's advice to load it
  unsafely (every reader of `torch.save` files in the package reports refusals with it).
- [`load_complete_model`] / [`CompleteWeightsMixin`]: `from_pretrained` that refuses a model folder lacking any of the
  model's weights (transformers fills those at random and only logs a report), names a local folder that does not
  exist (rather than complaining about Hub repo id syntax) and says why a pickled `pytorch_model.bin` is refused.
"""

import os
import pickle
import re
from collections.abc import Callable

from .hub_utils import hub_repo_id


def unpickling_reason(error: pickle.UnpicklingError) -> str:
    """Why `torch.load(weights_only=True)` refused a file, without the advice it wraps the reason in (to retry with
    `weights_only=False` or to allowlist the global: exactly what must not be done with an untrusted file)."""
    message = str(error).rpartition("WeightsUnpickler error:")[2]
    advice = ("weights_only", "safe_globals", "documentation", "Weights only load failed", "trust", "still be loaded")
    sentences = [" ".join(s.split()) for s in re.split(r"\n+|(?<=\.)\s+", message)]
    reason = " ".join(s for s in sentences if s and not any(a in s for a in advice))
    return reason or "It names classes or functions outside the allowlist."


def load_complete_model(from_pretrained: Callable, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
    """
    `from_pretrained(pretrained_model_name_or_path, *args, **kwargs)` (a transformers model class's, e.g.
    `CLIPModel.from_pretrained`) with the model's loading report checked: a folder whose weights lack any tensor of
    the model raises a `ValueError` naming the tensors (a damaged or incomplete model), where transformers would fill
    them at random and only log it. A local path that does not exist raises `FileNotFoundError`, and a pickled
    `pytorch_model.bin` that `torch.load(weights_only=True)` refuses a `ValueError` with the reason, without torch's
    advice to load it unsafely. `output_loading_info=True` returns `(model, loading_info)` as transformers does.
    """
    name = os.fspath(pretrained_model_name_or_path)
    location = os.path.join(name, kwargs["subfolder"]) if kwargs.get("subfolder") else name
    if not os.path.isdir(name):
        hub_repo_id(name, "model")  # a path that is not there, rather than transformers' repo id syntax error
    output_loading_info = kwargs.pop("output_loading_info", False)
    try:
        model, loading_info = from_pretrained(name, *args, output_loading_info=True, **kwargs)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"The weights in {location!r} (a pickled pytorch_model.bin) hold objects other than tensors, and are not "
            f"loaded for safety. {unpickling_reason(error)} Save the model with safetensors (`save_pretrained`)."
        ) from None
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise ValueError(
            f"The weights in {location!r} lack {len(missing)} tensors of {type(model).__name__}: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}. The model is damaged or incomplete, and not loaded."
        )
    return (model, loading_info) if output_loading_info else model


class CompleteWeightsMixin:
    """For `PreTrainedModel` classes (listed before it): `from_pretrained` is [`load_complete_model`]'s."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        return load_complete_model(super().from_pretrained, pretrained_model_name_or_path, *args, **kwargs)


__all__ = ["CompleteWeightsMixin", "load_complete_model", "unpickling_reason"]
