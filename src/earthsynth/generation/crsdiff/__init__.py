"""crsdiff: text + metadata + control maps -> image (after CRS-Diff).

pipeline.py: CRSDiffPipeline (inference); model.py: its UNet and control adapter; train.py:
the training family (config, build, dataset, loss, preview, export), which the registry names.
"""

from earthsynth.generation.crsdiff.model import ControlAdapter, MetadataUNet
from earthsynth.generation.crsdiff.pipeline import CRSDiffPipeline, CRSDiffPipelineOutput

__all__ = ["ControlAdapter", "CRSDiffPipeline", "CRSDiffPipelineOutput", "MetadataUNet"]
