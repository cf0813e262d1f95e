from .pipeline_dalle import DallePipeline, DallePipelineOutput, DallePipelineProgress
