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
    DecodeStepKeys,
    PrefixLayer,
    build_attention_masks,
    decode_step_attention,
    decode_step_keys,
    mask_logits_by_position,
)


AutoConfig.register(DalleConfig.model_type, DalleConfig)
AutoModel.register(DalleConfig, DalleModel)
AutoModelForCausalLM.register(DalleConfig, DalleForImageGeneration)
