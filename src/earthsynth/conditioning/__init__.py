"""Conditioning shared by the families: text, scalar metadata, layouts, control maps, dropout."""

from earthsynth.conditioning.control import (
    ControlAdapter,
    available_annotators,
    canny,
    content_shuffle,
    landcover_onehot,
    normalise_dem,
    rasterize_lines,
    sketch,
    unet_residual_spec,
)
from earthsynth.conditioning.dropout import ConditionDropout
from earthsynth.conditioning.layout import (
    LayoutEncoder,
    fourier_features,
    layout_from_boxes,
    rasterize_quads,
)
from earthsynth.conditioning.scalars import SCALAR_FIELDS, ScalarEmbedding, scalar_values
from earthsynth.conditioning.text import TextConditioner, TextEmbeddings, default_text_model_dir

__all__ = [
    "SCALAR_FIELDS",
    "ConditionDropout",
    "ControlAdapter",
    "LayoutEncoder",
    "ScalarEmbedding",
    "TextConditioner",
    "TextEmbeddings",
    "available_annotators",
    "canny",
    "content_shuffle",
    "default_text_model_dir",
    "fourier_features",
    "landcover_onehot",
    "layout_from_boxes",
    "normalise_dem",
    "rasterize_lines",
    "rasterize_quads",
    "scalar_values",
    "sketch",
    "unet_residual_spec",
]
