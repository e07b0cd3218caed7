"""crsdiff's modules: the MetadataUNet it shares with text2earth (date, GSD, cloud cover and
position as scalar fields) and the shared ControlAdapter (one conv pyramid per control map,
zero-initialised residuals added to the UNet's skip connections and middle block)."""

from earthsynth.conditioning.control import ControlAdapter
from earthsynth.generation.metadata_unet import MetadataUNet

__all__ = ["ControlAdapter", "MetadataUNet"]
