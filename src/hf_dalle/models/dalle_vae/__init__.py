from transformers import AutoConfig, AutoModel

from .configuration_dalle_vae import DalleVAEConfig
from .modeling_dalle_vae import (
    DalleVAE,
    DalleVAEDecoderOutput,
    DalleVAEEncoderOutput,
    DalleVAEOutput,
    DalleVAEPreTrainedModel,
    logit_laplace_nll,
    map_pixels,
    unmap_pixels,
)


AutoConfig.register(DalleVAEConfig.model_type, DalleVAEConfig)
AutoModel.register(DalleVAEConfig, DalleVAE)
