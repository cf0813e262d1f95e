"""Loading what a training run starts from: a component of a pipeline folder (`vae/`, `transformer/`, ...) or a
standalone model folder / Hub repo."""

import os


def load_component(cls, name_or_path: str, component: str, **kwargs):
    """`cls.from_pretrained` of `name_or_path/component` when `name_or_path` is a pipeline (a local folder or Hub repo
    with that subfolder), else of `name_or_path` itself."""
    if os.path.isdir(name_or_path):
        if os.path.isdir(os.path.join(name_or_path, component)):
            return cls.from_pretrained(name_or_path, subfolder=component, **kwargs)
        return cls.from_pretrained(name_or_path, **kwargs)
    try:
        return cls.from_pretrained(name_or_path, subfolder=component, **kwargs)
    except OSError:
        return cls.from_pretrained(name_or_path, **kwargs)


__all__ = ["load_component"]
