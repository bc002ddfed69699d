"""Diffusers-style pipelines for the continuous U-Net (one pipeline per file), installed as
`diffusers_cunet.pipelines`."""

from .pipeline_continuous_unet import ContinuousUNetPipeline, ContinuousUNetPipelineOutput
from .pipeline_continuous_unet_denoise import ContinuousUNetDenoisePipeline, DenoisePipelineOutput

__all__ = [
    "ContinuousUNetDenoisePipeline",
    "ContinuousUNetPipeline",
    "ContinuousUNetPipelineOutput",
    "DenoisePipelineOutput",
]
