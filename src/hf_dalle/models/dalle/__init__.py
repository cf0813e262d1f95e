from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_dalle import DalleConfig, paper_attention_types
from .modeling_dalle import (
    DalleCausalLMOutputWithPast,
    DalleForImageGeneration,
    DalleModel,
    DallePrefixCache,
    DallePreTrainedModel,
    DalleResblockGradientScaler,
    DalleStreamLogitsProcessor,
    PrefixLayer,
    build_attention_masks,
    mask_logits_by_position,
)

AutoConfig.register(DalleConfig.model_type, DalleConfig)
AutoModel.register(DalleConfig, DalleModel)
AutoModelForCausalLM.register(DalleConfig, DalleForImageGeneration)
