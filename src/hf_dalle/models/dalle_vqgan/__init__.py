from transformers import AutoConfig, AutoModel

from .configuration_dalle_vqgan import DalleVQGANConfig
from .modeling_dalle_vqgan import DalleVQGAN, inverse_haar_wavelet


AutoConfig.register(DalleVQGANConfig.model_type, DalleVQGANConfig)
AutoModel.register(DalleVQGANConfig, DalleVQGAN)
