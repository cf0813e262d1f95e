from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_dalle import DallePrefixCache
from .configuration_dalle import DalleConfig
from .modeling_dalle import (
    DalleCausalLMOutputWithPast,
    DalleForImageGeneration,
    DalleModel,
    DallePreTrainedModel,
)
from .stream_dalle import DalleStreamLogitsProcessor


AutoConfig.register(DalleConfig.model_type, DalleConfig)
AutoModel.register(DalleConfig, DalleModel)
AutoModelForCausalLM.register(DalleConfig, DalleForImageGeneration)

__all__ = [
    "DalleCausalLMOutputWithPast",
    "DalleConfig",
    "DalleForImageGeneration",
    "DalleModel",
    "DallePreTrainedModel",
    "DallePrefixCache",
    "DalleStreamLogitsProcessor",
]
