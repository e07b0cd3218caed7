"""text2earth: text + ground sample distance -> image of any size (after Text2Earth).

pipeline.py: Text2EarthPipeline (inference); model.py: its UNet; train.py: the training
family (config, build, dataset, loss, preview, export), which the registry names.
"""

from earthsynth.generation.text2earth.model import MetadataUNet
from earthsynth.generation.text2earth.pipeline import Text2EarthPipeline, Text2EarthPipelineOutput

__all__ = ["MetadataUNet", "Text2EarthPipeline", "Text2EarthPipelineOutput"]
