"""The models: the dVAE, the VQGAN image tokenizers, the DALL-E transformer and DALL·E Mini / Mega, one folder each."""

from .dalle import DalleForImageGeneration
from .dalle_bart import DalleBartForImageGeneration
from .dalle_vae import DalleVAE
from .dalle_vqgan import DalleVQGAN


# What a pipeline's `vae` can be: anything that encodes images in [0, 1] to `.indices` and decodes codes to `.sample`.
IMAGE_TOKENIZER_CLASSES = (DalleVAE, DalleVQGAN)
# What a pipeline's `transformer` can be: the models with the image-code interface (`make_cache`, `encode_captions`,
# `image_code_logits`, `next_image_code_logits`, `prepare_training_inputs`), through which the pipeline samples
# and the training scripts compute the loss.
TRANSFORMER_CLASSES = (DalleForImageGeneration, DalleBartForImageGeneration)
