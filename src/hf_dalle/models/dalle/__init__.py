from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_dalle import DallePrefixCache, PrefixLayer
from .configuration_dalle import DalleConfig, paper_attention_types
from .modeling_dalle import (
    CACHE_NAME,
    IMAGE_ATTENTION_RULES,
    DalleCausalLMOutputWithPast,
    DalleForImageGeneration,
    DalleModel,
    DallePreTrainedModel,
    DalleResblockGradientScaler,
    DalleStreamLogitsProcessor,
    DecodeStepKeys,
    build_attention_masks,
    build_flex_block_mask,
    decode_step_attention_forward,
    decode_step_keys,
    eager_attention_forward,
    mask_logits_by_position,
    stream_attention_rule,
)


AutoConfig.register(DalleConfig.model_type, DalleConfig)
AutoModel.register(DalleConfig, DalleModel)
AutoModelForCausalLM.register(DalleConfig, DalleForImageGeneration)
