"""ediffsr: efficient diffusion super-resolution (after EDiffSR).

model.py holds the EANet noise predictor with its CPEM prior, scheduler.py the mean-reverting
SDE, pipeline.py the inference pipeline, train.py the training family ("ediffsr" in the
registry) and the degradations. Importing this package loads no training code.
"""

from earthsynth.generation.ediffsr.model import CPEM, EANet, NAFBlock
from earthsynth.generation.ediffsr.pipeline import EDiffSRPipeline, EDiffSRPipelineOutput
from earthsynth.generation.ediffsr.scheduler import MeanRevertingScheduler

__all__ = ["CPEM", "EANet", "NAFBlock", "MeanRevertingScheduler", "EDiffSRPipeline", "EDiffSRPipelineOutput"]
