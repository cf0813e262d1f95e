"""hf_dalle: DALL-E (Ramesh et al. 2021) as transformers / diffusers models.

Importing the package registers its models with the transformers Auto classes. The converters of released weights
(`hf_dalle.conversion`) load on first use: `hf_dalle.convert_rudalle(...)` imports its module then.
"""

import importlib

from .demo import DEMO_MODEL_DIR
from .models.dalle import DalleConfig, DalleForImageGeneration, DalleModel, DalleStreamLogitsProcessor
from .models.dalle_bart import DalleBartConfig, DalleBartForImageGeneration
from .models.dalle_vae import DalleVAE, DalleVAEConfig, map_pixels, unmap_pixels
from .models.dalle_vqgan import DalleVQGAN, DalleVQGANConfig
from .pipelines import DallePipeline, DallePipelineOutput
from .tokenization_dalle import DalleTokenizer
from .version import __version__


# The converter functions the package names, and the module of `hf_dalle.conversion` that holds each.
_CONVERTERS = {
    "convert_openai_dvae": "convert_openai_dvae",
    "convert_rudalle": "convert_rudalle",
    "convert_ruclip": "convert_ruclip",
    "convert_sber_vqgan": "convert_rudalle_vqgan",
    "convert_yttm_to_tokenizer": "convert_yttm",
    "convert_dalle_mega": "convert_dalle_mega",
}


def __getattr__(name: str):
    if name in _CONVERTERS:
        return getattr(importlib.import_module(f".conversion.{_CONVERTERS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_CONVERTERS])


__all__ = [
    "DEMO_MODEL_DIR",
    "DalleBartConfig",
    "DalleBartForImageGeneration",
    "DalleConfig",
    "DalleForImageGeneration",
    "DalleModel",
    "DallePipeline",
    "DallePipelineOutput",
    "DalleStreamLogitsProcessor",
    "DalleTokenizer",
    "DalleVAE",
    "DalleVAEConfig",
    "DalleVQGAN",
    "DalleVQGANConfig",
    "convert_dalle_mega",
    "convert_openai_dvae",
    "convert_rudalle",
    "convert_ruclip",
    "convert_sber_vqgan",
    "convert_yttm_to_tokenizer",
    "map_pixels",
    "unmap_pixels",
]
