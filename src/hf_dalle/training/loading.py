"""Loading what a training run starts from: a component of a pipeline folder (`vae/`, `transformer/`, ...) or a
standalone model folder / Hub repo."""

import functools
import os

from transformers import AutoModel, PreTrainedModel

from ..loading_utils import load_complete_model
from ..models import IMAGE_TOKENIZER_CLASSES


def load_component(cls, name_or_path: str, component: str, **kwargs):
    """`cls.from_pretrained` of `name_or_path/component` when `name_or_path` is a pipeline (a local folder or Hub repo
    with that subfolder), else of `name_or_path` itself. A model lacking any of its tensors is refused, by name
    ([`load_complete_model`]), as the pipeline refuses it: training would start from random values."""
    from_pretrained = cls.from_pretrained
    if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
        from_pretrained = functools.partial(load_complete_model, cls.from_pretrained)
    if os.path.isdir(name_or_path):
        if os.path.isdir(os.path.join(name_or_path, component)):
            return from_pretrained(name_or_path, subfolder=component, **kwargs)
        return from_pretrained(name_or_path, **kwargs)
    try:
        return from_pretrained(name_or_path, subfolder=component, **kwargs)
    except OSError:
        return from_pretrained(name_or_path, **kwargs)


def load_image_tokenizer(name_or_path: str, **kwargs):
    """The image tokenizer of a pipeline (its `vae/`) or a standalone folder / Hub repo: a [`DalleVAE`] or a
    [`DalleVQGAN`], whichever its config names (`AutoModel`)."""
    model = load_component(AutoModel, name_or_path, "vae", **kwargs)
    if not isinstance(model, IMAGE_TOKENIZER_CLASSES):
        names = " or ".join(cls.__name__ for cls in IMAGE_TOKENIZER_CLASSES)
        raise ValueError(f"{name_or_path!r} holds a {type(model).__name__}, not an image tokenizer ({names}).")
    return model


__all__ = ["load_component", "load_image_tokenizer"]
