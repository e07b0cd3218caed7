"""aerogen: text + horizontal and rotated boxes with classes -> image (after AeroGen).

model.py holds the UNet and its layout attention, pipeline.py the inference pipeline and the
condition encoding, train.py the training adapter (FAMILY), imported only by the trainer.
"""

from earthsynth.generation.aerogen.model import AeroGenUNet
from earthsynth.generation.aerogen.pipeline import AeroGenPipeline, AeroGenPipelineOutput

__all__ = ["AeroGenPipeline", "AeroGenPipelineOutput", "AeroGenUNet"]
