from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_dalle_bart import DalleBartConfig
from .modeling_dalle_bart import (
    DalleBartDecoder,
    DalleBartEncoder,
    DalleBartForImageGeneration,
    DalleBartModel,
    DalleBartPreTrainedModel,
)


AutoConfig.register(DalleBartConfig.model_type, DalleBartConfig)
AutoModel.register(DalleBartConfig, DalleBartModel)
AutoModelForSeq2SeqLM.register(DalleBartConfig, DalleBartForImageGeneration)
