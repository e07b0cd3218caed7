"""Scalar metadata (GSD, date, cloud cover, position) -> one embedding vector per sample.

Each field is normalised in a fixed way, expanded into sinusoidal features, sent through
its own small MLP, and the per-field vectors are summed. An unknown value (NaN) or a
value dropped for classifier-free guidance takes the field's learned null vector instead,
so "unknown" and "unconditional" are the same thing to the model.

Units of `values` (natural units, NaN = unknown):
    gsd          metres per pixel, > 0            -> log10(gsd)            (0.1 m -> -1, 30 m -> 1.5)
    year         calendar year, e.g. 2019         -> (year - 2000) / 25
    month        1..12                            -> angle 2 pi (month - 1) / 12   (cyclic)
    day          day of the month, 1..31          -> angle 2 pi (day - 1) / 31     (cyclic)
    cloud_cover  percent, 0..100 (as in fMoW / Landsat metadata; 0.3 means 0.3 %, not 30 %)
                                                  -> cloud_cover / 50 - 1
    lat          degrees, -90..90                 -> lat / 90
    lon          degrees, -180..180               -> angle lon in radians              (cyclic)

The output is meant to be added to a UNet's timestep embedding. The last layer keeps its
normal initialisation (not zero): a zero layer would also zero the gradient of the MLP
below it at the start, and the null vectors then carry no signal either; the UNet learns
to use a non-zero offset from the first step.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

SCALAR_FIELDS = ("gsd", "year", "month", "day", "cloud_cover", "lat", "lon")
CYCLIC_FIELDS = ("month", "day", "lon")
# Valid ranges in natural units (inclusive); values outside are refused, not clipped.
FIELD_RANGES = {
    "gsd": (0.0, math.inf),  # strictly positive, checked separately
    "year": (-math.inf, math.inf),
    "month": (1.0, 12.0),
    "day": (1.0, 31.0),
    "cloud_cover": (0.0, 100.0),
    "lat": (-90.0, 90.0),
    "lon": (-180.0, 180.0),
}


def normalise_field(name: str, values: torch.Tensor) -> torch.Tensor:
    """Natural units -> a number of order 1 (linear fields) or an angle in radians (cyclic)."""
    if name == "gsd":
        return torch.log10(values)
    if name == "year":
        return (values - 2000.0) / 25.0
    if name == "month":
        return 2 * math.pi * (values - 1.0) / 12.0
    if name == "day":
        return 2 * math.pi * (values - 1.0) / 31.0
    if name == "cloud_cover":
        return values / 50.0 - 1.0
    if name == "lat":
        return values / 90.0
    if name == "lon":
        return torch.deg2rad(values)
    raise ValueError(f"unknown scalar field {name!r}; known: {', '.join(SCALAR_FIELDS)}")


def field_frequencies(name: str, num_frequencies: int) -> torch.Tensor:
    """Frequencies of the sin/cos features of one field.

    Cyclic fields use integer harmonics 1..F so the features stay periodic. Linear fields
    use a geometric range from pi/4 (one period spans 8 normalised units, so e.g. years
    1900..2100 never alias) up to 128 pi (resolution of about 1/256 of a unit).
    """
    if name in CYCLIC_FIELDS:
        return torch.arange(1, num_frequencies + 1, dtype=torch.float32)
    return (math.pi / 4) * 2.0 ** torch.linspace(0, 9, num_frequencies)


def scalar_values(
    metadata: Sequence[Mapping], fields: Sequence[str] = SCALAR_FIELDS
) -> torch.Tensor:
    """List of metadata dicts -> (B, F) float32 tensor in natural units, NaN where unknown.

    A missing key or None gives NaN. If year/month/day are missing, a `date` entry
    (datetime.date/datetime or an ISO string "YYYY-MM-DD...") fills them.
    """
    rows = []
    for item in metadata:
        item = dict(item)
        date = item.get("date")
        if date is not None:
            if isinstance(date, str):
                date = _dt.date.fromisoformat(date[:10])
            for part in ("year", "month", "day"):
                if item.get(part) is None:
                    item[part] = getattr(date, part)
        rows.append([math.nan if item.get(f) is None else float(item[f]) for f in fields])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(fields))


class ScalarEmbedding(ModelMixin, ConfigMixin):
    """(B, F) scalar metadata with NaN for unknown -> (B, embed_dim), summed over fields."""

    @register_to_config
    def __init__(
        self,
        fields: tuple[str, ...] = SCALAR_FIELDS,
        embed_dim: int = 256,
        num_frequencies: int = 16,
    ):
        super().__init__()
        fields = tuple(fields)
        unknown = [f for f in fields if f not in SCALAR_FIELDS]
        if unknown or not fields or len(set(fields)) != len(fields):
            raise ValueError(
                f"fields must be distinct names from {', '.join(SCALAR_FIELDS)}; got {fields}"
            )
        self.fields = fields
        self.mlps = nn.ModuleDict(
            {
                f: nn.Sequential(
                    nn.Linear(2 * num_frequencies, embed_dim),
                    nn.SiLU(),
                    nn.Linear(embed_dim, embed_dim),
                )
                for f in fields
            }
        )
        # One learned "unknown / unconditional" vector per field, small like an embedding.
        self.null = nn.Parameter(torch.randn(len(fields), embed_dim) * 0.02)

    @torch.no_grad()
    def silence(self) -> None:
        """Zero output for every input (last layers and null vectors zero), for an embedding
        added to a pretrained model that must start exactly as it was. The last layers'
        weights get gradients at once (their input is not zero), the layers below from the
        second step, as with ControlNet's zero convolutions."""
        for mlp in self.mlps.values():
            mlp[-1].weight.zero_()
            mlp[-1].bias.zero_()
        self.null.zero_()

    def values_from_dicts(self, metadata: Sequence[Mapping]) -> torch.Tensor:
        """Metadata dicts -> (B, F) values in this embedding's field order (NaN = unknown)."""
        return scalar_values(metadata, self.fields)

    def check_values(self, values: torch.Tensor) -> None:
        if values.ndim != 2 or values.shape[1] != len(self.fields):
            raise ValueError(
                f"values must have shape (B, {len(self.fields)}) for fields {self.fields}, "
                f"got {tuple(values.shape)}"
            )
        for i, name in enumerate(self.fields):
            column = values[:, i]
            known = column[~torch.isnan(column)]
            low, high = FIELD_RANGES[name]
            bad = (known <= 0) if name == "gsd" else (known < low) | (known > high)
            if bad.any():
                raise ValueError(
                    f"{name} value {known[bad][0].item()} is out of range "
                    f"({'> 0 m/px' if name == 'gsd' else f'{low}..{high}'})"
                )

    def forward(self, values: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """values (B, F) natural units, NaN = unknown; drop (B, F) bool, True = use null."""
        self.check_values(values)
        values = values.to(device=self.null.device, dtype=torch.float32)
        use_null = torch.isnan(values)
        if drop is not None:
            if drop.shape != values.shape:
                raise ValueError(
                    f"drop must have shape {tuple(values.shape)}, got {tuple(drop.shape)}"
                )
            use_null = use_null | drop.to(device=values.device, dtype=torch.bool)

        # Put a harmless stand-in where the value is unknown: NaN would poison the gradient
        # through torch.where even though that branch is not selected.
        safe = torch.where(use_null, torch.ones_like(values), values)
        dtype = self.null.dtype
        out = torch.zeros(values.shape[0], self.null.shape[1], device=values.device, dtype=dtype)
        for i, name in enumerate(self.fields):  # loop over fields, vectorised over the batch
            # Features in float32 whatever the weights are: bf16 cannot even hold 2019 exactly.
            freqs = field_frequencies(name, self.config.num_frequencies).to(values.device)
            angle = normalise_field(name, safe[:, i])[:, None] * freqs  # (B, K)
            features = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(dtype)
            out = out + torch.where(use_null[:, i, None], self.null[i], self.mlps[name](features))
        return out
