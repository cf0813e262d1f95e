"""hf_dalle: DALL-E (Ramesh et al. 2021) as transformers / diffusers models.

The package loads lazily, as transformers and diffusers do: `import hf_dalle` imports neither torch nor transformers
(so `hf-dalle --help` answers at once); a name, `hf_dalle.DallePipeline`, imports its module on first use. Importing
a model's module registers it with the transformers Auto classes: after `from hf_dalle import DalleConfig` (or any
other model name, or `import hf_dalle.models`), `AutoModel.from_pretrained` loads hf_dalle checkpoints.
"""

import importlib

from .import_utils import quiet_optional_backend_warnings
from .version import __version__


quiet_optional_backend_warnings()

# Each public name and the module (under hf_dalle) that defines it, imported on first access.
_LAZY_NAMES = {
    "DEMO_MODEL_DIR": "demo",
    "DalleConfig": "models.dalle",
    "DalleForImageGeneration": "models.dalle",
    "DalleModel": "models.dalle",
    "DalleStreamLogitsProcessor": "models.dalle",
    "DalleBartConfig": "models.dalle_bart",
    "DalleBartForImageGeneration": "models.dalle_bart",
    "DalleVAE": "models.dalle_vae",
    "DalleVAEConfig": "models.dalle_vae",
    "map_pixels": "models.dalle_vae",
    "unmap_pixels": "models.dalle_vae",
    "DalleVQGAN": "models.dalle_vqgan",
    "DalleVQGANConfig": "models.dalle_vqgan",
    "DallePipeline": "pipelines",
    "DallePipelineOutput": "pipelines",
    "DalleTokenizer": "tokenization_dalle",
    # The converters of released weights.
    "convert_openai_dvae": "conversion.convert_openai_dvae",
    "convert_rudalle": "conversion.convert_rudalle",
    "convert_ruclip": "conversion.convert_ruclip",
    "convert_sber_vqgan": "conversion.convert_rudalle_vqgan",
    "convert_yttm_to_tokenizer": "conversion.convert_yttm",
    "convert_dalle_mega": "conversion.convert_dalle_mega",
}


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_NAMES])


__all__ = list(_LAZY_NAMES)
