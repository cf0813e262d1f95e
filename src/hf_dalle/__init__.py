"""hf_dalle: DALL-E (Ramesh et al. 2021) as transformers / diffusers models.

Importing the package registers its models with the transformers Auto classes.
"""

from pathlib import Path

from .convert_openai_dvae import convert_openai_dvae
from .convert_ruclip import convert_ruclip
from .convert_rudalle_vqgan import convert_sber_vqgan
from .convert_yttm import convert_yttm_to_tokenizer
from .models.dalle import DalleConfig, DalleForImageGeneration, DalleModel, DalleStreamLogitsProcessor
from .models.dalle_bart import DalleBartConfig, DalleBartForImageGeneration
from .models.dalle_vae import DalleVAE, DalleVAEConfig, map_pixels, unmap_pixels
from .models.dalle_vqgan import DalleVQGAN, DalleVQGANConfig
from .pipelines import DallePipeline, DallePipelineOutput
from .tokenization_dalle import DalleTokenizer


__version__ = "0.1.0"

# The small pipeline trained on the procedural shapes world that ships inside the package.
DEMO_MODEL_DIR = str(Path(__file__).parent / "demo_model")

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
    "convert_ruclip",
    "convert_sber_vqgan",
    "convert_yttm_to_tokenizer",
    "map_pixels",
    "unmap_pixels",
]


def __getattr__(name: str):
    # The DALL·E Mini / Mega converter is imported on first use, so that `import hf_dalle` does not load it.
    if name == "convert_dalle_mega":
        from .conversion.convert_dalle_mega import convert_dalle_mega

        return convert_dalle_mega
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
