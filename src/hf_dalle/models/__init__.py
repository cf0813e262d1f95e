"""The models: the dVAE, the VQGAN image tokenizers and the DALL-E transformer, one folder each."""

from .dalle_vae import DalleVAE
from .dalle_vqgan import DalleVQGAN


# What a pipeline's `vae` can be: anything that encodes images in [0, 1] to `.indices` and decodes codes to `.sample`.
IMAGE_TOKENIZER_CLASSES = (DalleVAE, DalleVQGAN)
