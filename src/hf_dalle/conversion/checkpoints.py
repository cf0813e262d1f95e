"""Reading released PyTorch checkpoints without running code from them, and checking them before conversion.

A `torch.save` file is a pickle, and unpickling can import anything and run it. Every file here is read with
`torch.load(weights_only=True)`, which allows only tensors, numbers, strings and containers; the few classes a released
file names besides (OpenAI's pickled `dall_e` modules, Lightning's `ModelCheckpoint` key) are mapped to inert stand-ins
([`stand_in`]) that only receive the pickled attributes. Anything else refuses the file with the reason
(`loading_utils.unpickling_reason`), never with torch's advice to load it unsafely.

Every converter then checks all the tensors it read against the model they fill ([`check_state_dict`]: names, shapes,
floating point, finite) before it allocates or writes anything.
"""

import os
import pickle
import zipfile
from collections.abc import Mapping

import torch

from ..loading_utils import unpickling_reason


# What a Lightning checkpoint of taming-transformers (pytorch-lightning 1.x) holds besides tensors, containers and
# numbers: its `callbacks` entry is keyed by the ModelCheckpoint class itself. Only the name is read, nothing runs.
LIGHTNING_GLOBALS = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)


class PickledModule:
    """What an allowlisted class of a pickle loads as: its pickled attributes and no behaviour."""


def stand_in(qualified_name: str) -> type:
    """An inert [`PickledModule`] class that `torch.serialization.safe_globals` matches to `qualified_name`
    (`module.qualname`), so that a pickle naming that class loads without its package."""
    module, _, name = qualified_name.rpartition(".")
    return type(name, (PickledModule,), {"__module__": module, "__qualname__": name})


def pickled_module_tensors(module: PickledModule, prefix: str = "") -> dict[str, torch.Tensor]:
    """The parameters and buffers of a pickled `nn.Module` tree by dotted name, like `nn.Module.state_dict()`."""
    tensors = {}
    for attribute in ("_parameters", "_buffers", "_modules"):
        entries = vars(module).get(attribute, {})
        if not isinstance(entries, dict):
            raise ValueError(f"Malformed pickled module `{prefix or 'root'}`: `{attribute}` is not a dict.")
        for name, value in entries.items():
            if attribute == "_modules" and isinstance(value, PickledModule):
                tensors.update(pickled_module_tensors(value, f"{prefix}{name}."))
            elif isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
    return tensors


def safe_torch_load(path: str | os.PathLike, stand_ins: list[type], refusal: str, mmap: bool = False):
    """
    `torch.load(path, weights_only=True)` with the classes `stand_ins` allowed (see [`stand_in`]), on the CPU.

    Args:
        refusal: what the `ValueError` says of a file that names anything else, after its path and before the reason
            (e.g. "holds objects other than tensors").
        mmap: memory-map a zip archive (torch >= 1.6), so that tensors are read from disk only when used; the legacy
            (pre-1.6) format cannot be mapped and is read whole.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path!r}.")
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as file:
        if not is_zip and file.read(1) != pickle.PROTO:  # torch's legacy format: pickles, protocol >= 2
            raise ValueError(f"{path!r} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle).")
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as error:
        # Raised for anything outside the allowlist: other classes, functions, or code the pickle tries to run.
        reason = unpickling_reason(error)
        if not is_zip and "persistent_load" in reason:
            reason += (
                " (a whole module saved in torch's legacy pre-1.6 format embeds its source code and cannot be read "
                "safely; a state_dict() saved in any format can)"
            )
        raise ValueError(f"{path!r} {refusal}, and is not loaded for safety. {reason}") from error
    except Exception as error:
        raise ValueError(f"{path!r} is not a PyTorch checkpoint (torch.load failed with {error!r}).") from error


def check_state_dict(
    tensors: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    source: str,
    model: str,
    ignore_unexpected: bool = False,
    hint: str = "",
) -> None:
    """
    Check the tensors read from a checkpoint against the model they are to fill, before anything is allocated or
    written: exactly the names of `shapes` (name -> shape, e.g. those of the model built on the meta device), each of
    its shape, floating-point and finite (NaN or infinite weights are damage: never converted). Raises a `ValueError`
    that names `source` (the file) and the offending tensors; `model` says where the shapes come from (e.g. "the
    ruDALL-E config (24 layers)"). With `ignore_unexpected`, tensors that `shapes` does not name are the caller's
    business (min-dalle's files hold some of no use). `hint` ends the messages (e.g. which argument to check).
    """
    missing = sorted(shapes.keys() - tensors.keys())
    unexpected = [] if ignore_unexpected else sorted(tensors.keys() - shapes.keys())
    if missing or unexpected:
        problems = [
            f"{kind} {names[:8]}{f' and {len(names) - 8} more' if len(names) > 8 else ''}"
            for kind, names in (("missing", missing), ("unexpected", unexpected))
            if names
        ]
        raise ValueError(f"{source} does not hold the tensors of {model}: {', '.join(problems)}.{hint}")
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"{source}: {name!r} has shape {tuple(tensor.shape)}, but {model} gives {tuple(shape)}.{hint}"
            )
        if not tensor.is_floating_point():
            raise ValueError(f"{source}: {name!r} holds {tensor.dtype} values, not floating-point weights.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: {name!r} holds NaN or infinite values: the file is damaged, not converted.")


_LIGHTNING_STAND_INS = [stand_in(name) for name in LIGHTNING_GLOBALS]


def load_torch_checkpoint_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    The state dict of a `torch.save` file: a plain state dict, or the `state_dict` entry of a (Lightning) checkpoint.
    Read safely (only Lightning's ModelCheckpoint class name is allowed besides tensors and containers) and
    memory-mapped when the file is a zip archive, so tensors are read lazily.
    """
    checkpoint = safe_torch_load(
        path,
        _LIGHTNING_STAND_INS,
        "holds objects other than tensors and a Lightning checkpoint's plain data",
        mmap=True,
    )
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in checkpoint.items()
    ):
        raise ValueError(f"{os.fspath(path)!r} is neither a state dict nor a checkpoint with a `state_dict` entry.")
    return dict(checkpoint)


__all__ = [
    "LIGHTNING_GLOBALS",
    "PickledModule",
    "check_state_dict",
    "load_torch_checkpoint_state_dict",
    "pickled_module_tensors",
    "safe_torch_load",
    "stand_in",
]
