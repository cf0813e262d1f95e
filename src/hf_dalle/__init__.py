"""hf_dalle: DALL-E (Ramesh et al. 2021) as transformers / diffusers models.

Importing the package registers its models with the transformers Auto classes.
"""

from pathlib import Path

from .convert_openai_dvae import convert_openai_dvae
from .models.dalle import DalleConfig, DalleForImageGeneration, DalleModel, DalleStreamLogitsProcessor
from .models.dalle_vae import DalleVAE, DalleVAEConfig, map_pixels, unmap_pixels
from .models.dalle_vqgan import DalleVQGAN, DalleVQGANConfig
from .pipelines import DallePipeline, DallePipelineOutput
from .tokenization_dalle import DalleTokenizer


__version__ = "0.1.0"

# The small pipeline trained on the procedural shapes world that ships inside the package.
DEMO_MODEL_DIR = str(Path(__file__).parent / "demo_model")

__all__ = [
    "DEMO_MODEL_DIR",
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
    "convert_openai_dvae",
    "map_pixels",
    "unmap_pixels",
]
