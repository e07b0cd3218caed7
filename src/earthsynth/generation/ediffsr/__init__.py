"""ediffsr: efficient diffusion super-resolution (after EDiffSR): the EANet noise predictor
with the CPEM conditional prior, sampled with a mean-reverting SDE from the bicubic
upsampling. This is the model and the scheduler; the pipeline, the training family, the
bundled checkpoint and `earthsynth upscale` are still to come (issue 6)."""

from earthsynth.generation.ediffsr.model import CPEM, EANet, NAFBlock
from earthsynth.generation.ediffsr.scheduler import MeanRevertingScheduler

__all__ = ["CPEM", "EANet", "NAFBlock", "MeanRevertingScheduler"]
