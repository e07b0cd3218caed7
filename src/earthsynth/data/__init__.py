"""Real data: readers for GeoTIFF, VOC, COCO, DOTA, YOLO and hyperspectral cubes, the bundled
sources with their fixed split, tiling, and captions. Every reader returns or fills the one
sample schema of `earthsynth.data.schema`."""

from earthsynth.data.schema import SAMPLE_KEYS, Sample, image_to_tensor, tensor_to_image

__all__ = ["SAMPLE_KEYS", "Sample", "image_to_tensor", "tensor_to_image"]
