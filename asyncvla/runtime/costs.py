"""The stage-cost model: seconds one stage (an inference batch, a training micro-batch) takes for a
batch of ``x`` samples on one device,

    c(x) = max(floor_s, a_s + b_s * x)    for x > 0,        c(x) = 0    for x <= 0,

a fixed cost per call ``a_s``, a cost per sample ``b_s`` and a floor that small batches do not get
under (a kernel's minimum time). An empty batch runs nothing, so it costs nothing, floor included.

One model for the emulated policy (how long it holds its device), the profiles, the discrete-event
simulator and the dynamic-batching auto-tune; pydantic only (no torch), so the simulator can
import it. ``fit_cost`` fits it to measured (batch size, seconds) points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

KEYS = ("a_s", "b_s", "floor_s")


class CostModel(BaseModel):
    """``max(floor_s, a_s + b_s * x)`` seconds for a batch of x > 0 samples (0 for x <= 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    a_s: float = Field(0.0, ge=0.0)
    """Seconds per call, whatever the batch."""
    b_s: float = Field(0.0, ge=0.0)
    """Seconds per sample."""
    floor_s: float = Field(0.0, ge=0.0)
    """The least a non-empty batch costs."""

    def __call__(self, x: float) -> float:
        return 0.0 if x <= 0 else max(self.floor_s, self.a_s + self.b_s * x)

    def scaled(self, s: float) -> CostModel:
        """Every cost times ``s`` (a profile's ``time_scale``)."""
        return CostModel(a_s=self.a_s * s, b_s=self.b_s * s, floor_s=self.floor_s * s)

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in KEYS}

    @classmethod
    def from_dict(cls, value: CostModel | Mapping[str, Any] | None, name: str = "cost model") -> CostModel:
        """A cost model from a mapping of some of ``a_s``, ``b_s``, ``floor_s`` (missing keys: 0;
        None: all 0). Refuses unknown keys and negative or non-finite costs with one line
        naming ``name`` and the key."""
        if isinstance(value, CostModel):
            return value
        d = dict(value or {})
        extra = sorted(str(k) for k in set(d) - set(KEYS))
        if extra:
            raise ValueError(f"{name}: unknown keys {extra}; allowed: {', '.join(KEYS)}")
        try:
            return cls(**d)
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"{name}.{err['loc'][0]}: {err['msg']} (got {err['input']!r})") from None


def fit_cost(points: Mapping[str | int, float], min_x: int = 8) -> CostModel:
    """``a + b x`` by least squares over the points with x >= ``min_x`` (b and a clipped at 0),
    and ``floor``: the mean cost of the points below ``min_x`` (small batches do not get cheaper
    than that). If no point reaches ``min_x``, the line is fitted to all of them, without a floor.

    ``points``: batch size (an int, or its string as JSON keys are) -> measured seconds."""
    xs = sorted((int(x), float(y)) for x, y in points.items())
    if not xs:
        raise ValueError("fit_cost needs at least one point")
    big = [(x, y) for x, y in xs if x >= min_x]
    small = [y for x, y in xs if x < min_x] if big else []
    big = big or xs
    n = len(big)
    mx = sum(x for x, _ in big) / n
    my = sum(y for _, y in big) / n
    sxx = sum((x - mx) ** 2 for x, _ in big)
    b = max(0.0, sum((x - mx) * (y - my) for x, y in big) / sxx) if sxx > 0 else 0.0
    a = max(0.0, my - b * mx)
    floor = sum(small) / len(small) if small else 0.0
    return CostModel(a_s=a, b_s=b, floor_s=floor)


def fit_error(points: Mapping[str | int, float], model: CostModel | Mapping[str, float]) -> float:
    """Largest relative error ``|c(x) / y - 1|`` of a cost model over measured points (x, y > 0)."""
    c = CostModel.from_dict(model)
    return max(abs(c(int(x)) / float(y) - 1.0) for x, y in points.items())
