"""2-D log2 grids over two hyperparameters: the points a sweep runs and a landscape plots.

Each axis is ``steps`` points, log-uniform from centre·2^−span to centre·2^+span, the centre
being the preset's value (or a --lr/--momentum/... override); the default span, (steps−1)/2,
puts a factor of 2 between neighbours. ``momentum`` is gridded in 1−ρ (the quantity the paper's
λ/(1−ρ) ridge is linear in), and AdamW's ``beta1`` in 1−β₁ likewise; ``batch_size`` values are
rounded to the nearest integer (two that round alike are an error). Every point is run for
``seeds`` seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ridgeline.errors import HParamError, RidgelineError
from ridgeline.hparams import HParams
from ridgeline.presets import get_preset
from ridgeline.runs import ledger

AXES = ("lr", "batch_size", "momentum", "weight_decay", "beta1")
SHORT = {"lr": "lr", "batch_size": "batch", "momentum": "momentum", "weight_decay": "wd",
         "beta1": "beta1"}
COMPLEMENTED = ("momentum", "beta1")  # gridded in 1−x, in [0, 1)
OPTIMIZER_AXES = {"sgd": "momentum", "adamw": "beta1"}  # each optimiser's own momentum
ALIASES = {**{v: k for k, v in SHORT.items()}, **{a: a for a in AXES}, "bs": "batch_size",
           "batch-size": "batch_size", "weight-decay": "weight_decay", "mom": "momentum"}
SLICES = {"lr-batch": ("lr", "batch_size"), "lr-momentum": ("lr", "momentum"),
          "lr-wd": ("lr", "weight_decay")}  # the paper's three landscapes
SPEC_ATTR = "ridgeline_spec"  # study user attr: the latest GridSpec, for `ridgeline plot`





@dataclass(frozen=True)
class GridPoint:
    hparams: HParams
    seed: int
    index: tuple[int, int]  # position along (axes[0], axes[1])
    key: str


@dataclass(frozen=True)
class GridSpec:
    axes: tuple[str, str]
    values: tuple[tuple, tuple]  # raw hyperparameter values along each axis
    base: HParams
    preset: str
    seeds: tuple[int, ...]

    @property
    def slice_name(self) -> str:
        return f"{SHORT[self.axes[0]]}-{SHORT[self.axes[1]]}"

    def default_study_name(self) -> str:
        return f"{self.slice_name}-{self.preset}"

    def points(self) -> list[GridPoint]:
        """Seed-major, so the first pass over the grid is a complete single-seed map."""
        a, b = self.axes
        out = []
        for seed in self.seeds:
            for i, va in enumerate(self.values[0]):
                for j, vb in enumerate(self.values[1]):
                    hp = self.base.replace(**{a: va, b: vb})
                    out.append(GridPoint(hp, seed, (i, j), ledger.point_key(hp, self.preset, seed)))
        return out

    def to_dict(self) -> dict:
        return {"axes": list(self.axes), "values": [list(v) for v in self.values],
                "base": self.base.to_dict(), "preset": self.preset, "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, d: dict) -> GridSpec:
        return cls(tuple(d["axes"]), (tuple(d["values"][0]), tuple(d["values"][1])),
                   HParams(**d["base"]), d["preset"], tuple(d["seeds"]))


def parse_slice(text: str) -> tuple[str, str]:
    """'lr-wd', 'momentum-wd', 'lr-batch_size', ...: any two distinct axes, short or long."""
    parts = text.split("-")
    names = [ALIASES.get(p) for p in parts]
    if len(parts) != 2 or None in names or names[0] == names[1]:
        raise RidgelineError(
            f"bad slice {text!r}: use A-B with two different of lr, batch, momentum, wd, beta1 "
            f"(the paper's: {', '.join(SLICES)})")
    return names[0], names[1]


def _clean(v: float) -> float:
    return float(f"{v:.10g}")


def axis_values(name: str, centre: float, steps: int, span: float | None = None) -> tuple:
    """``steps`` log2-uniform values about ``centre`` (see the module docstring)."""
    if not (isinstance(steps, int) and steps >= 1):
        raise RidgelineError(f"steps={steps!r} for {name} is not allowed: it must be an int >= 1")
    span = (steps - 1) / 2 if span is None else span
    if not (math.isfinite(span) and span >= 0):
        raise RidgelineError(f"span={span!r} for {name} is not allowed: it must be >= 0 octaves")
    offsets = [0.0] if steps == 1 else [-span + 2 * span * k / (steps - 1) for k in range(steps)]
    if name in COMPLEMENTED:
        return _complement_values(name, centre, offsets)
    if not centre > 0:
        raise RidgelineError(f"cannot grid {name} in log2 about {centre!r}: its centre must be "
                             f"> 0 (set --{name.replace('_', '-')})")
    vals = [centre * 2**o for o in offsets]
    if name == "batch_size":
        ints = [max(1, round(v)) for v in vals]
        if len(set(ints)) < len(ints):
            raise RidgelineError(f"batch_size values {ints} collide after rounding to integers: "
                                 f"use fewer steps or a wider span")
        return tuple(ints)
    return tuple(_clean(v) for v in vals)


def _complement_values(name: str, centre: float, offsets: list[float]) -> tuple:
    gaps = [(1 - centre) * 2**o for o in offsets]
    if max(gaps) > 1:
        raise RidgelineError(f"{name} grid leaves [0, 1): 1-{name} would reach {max(gaps):.3g}"
                             f" > 1 about {name}={centre}: use a smaller span")
    return tuple(_clean(1 - g) for g in gaps)


def make_grid(axes: tuple[str, str] | str, preset: str = "cpu-mini", base: HParams | None = None,
              steps: tuple[int, int] | int = 7, span=None, seeds: int = 1) -> GridSpec:
    """Validate everything up front, so a bad grid fails in one line, not in worker 3 at 2 am."""
    axes = parse_slice(axes) if isinstance(axes, str) else tuple(axes)
    if len(axes) != 2 or any(a not in AXES for a in axes) or axes[0] == axes[1]:
        raise RidgelineError(f"axes {axes!r} are not allowed: pick two different of {AXES}")
    p = get_preset(preset)
    base = base or p.hparams
    for optimizer, axis in OPTIMIZER_AXES.items():
        if base.optimizer != optimizer and axis in axes:
            own = OPTIMIZER_AXES[base.optimizer]
            raise RidgelineError(f"axis {axis} is not used by optimizer {base.optimizer!r} "
                                 f"({own} is its momentum): sweep two of lr, batch_size, "
                                 f"weight_decay, {own}")
    steps, spans = _per_axis(steps, "steps"), _per_axis(span, "span")
    if not (isinstance(seeds, int) and seeds >= 1):
        raise RidgelineError(f"seeds={seeds!r} is not allowed: it must be an int >= 1")
    values = tuple(axis_values(a, getattr(base, a), n, s)
                   for a, n, s in zip(axes, steps, spans, strict=True))
    spec = GridSpec(axes, values, base, p.name, tuple(range(seeds)))
    check_points(spec, p.train_size or 50_000)
    return spec


def _per_axis(value, name: str) -> tuple:
    """One value for both axes, or one per axis."""
    if value is None or isinstance(value, (int, float)):
        return (value, value)
    value = tuple(value)
    if len(value) == 1:
        return value * 2
    if len(value) != 2:
        raise RidgelineError(f"{name} {list(value)}: give one value, or one per axis (two)")
    return value


def check_points(spec: GridSpec, n_train: int) -> None:
    a, b = spec.axes
    for va in spec.values[0]:
        for vb in spec.values[1]:
            try:
                hp = spec.base.replace(**{a: va, b: vb})
            except HParamError as e:
                raise RidgelineError(f"grid point {a}={va:g}, {b}={vb:g}: {e}") from None
            if hp.batch_size > n_train:
                raise RidgelineError(f"grid point batch_size={hp.batch_size} exceeds the {n_train}"
                                     f" training images of preset {spec.preset!r}: narrow the span")
            for name, dist in ledger.DISTRIBUTIONS.items():
                v = getattr(hp, name, None)
                if v is not None and not dist.low <= v <= dist.high:
                    raise RidgelineError(f"grid value {name}={v:g} is outside the recordable "
                                         f"range [{dist.low:g}, {dist.high:g}]")


