"""The tuner's decision settings, defined once.

``PAPER`` is the search as Page published it (×2 / ÷2 line searches, stop at the first cycle
that improves nothing); ``DEFAULT`` is ``FlatDirectionSampler``'s, the measured best of
docs/tuner.md under seed noise (the accelerating line search, and instead of stopping, a rising
replicate level on the incumbent with ×4 / ÷4 probes). ``ridgeline tune``, `ridgeline
reproduce` and the reproduce report's replay of a tune all use ``DEFAULT``, so the replay makes
exactly the decisions the tune made. It needs no noise estimate: it refines on noise rather
than thresholding it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ridgeline.errors import TuneError

__all__ = ["DEFAULT", "LINE_SEARCHES", "MAX_LEVEL", "NOISE_FRACTION", "PAPER", "RECHECKS",
           "TunerSettings", "threshold"]

LINE_SEARCHES = ("double", "accelerate")  # tuner.descent's module docstring describes both
RECHECKS = ("all", "best")  # which compared points get the level's replicates
MAX_LEVEL = 8  # docs/tuner.md measures 1 to 8
# A threshold rule measured in benchmarks/tuner_tabular.py: min_improvement = this × seed std.
NOISE_FRACTION = 0.5


@dataclass(frozen=True)
class TunerSettings:
    """How the search judges a step: the line search, by how much a step must beat the best
    (test accuracy as a fraction), and how it refines instead of stopping (``max_level``
    replicates at most, on ``recheck`` points, ``wide`` ×4 / ÷4 probes, ``raw_axes`` each raw
    parameter's own axis too; tuner.sampler)."""

    line_search: str = "accelerate"
    min_improvement: float = 0.0
    max_level: int = MAX_LEVEL
    recheck: str = "best"
    wide: bool = True
    # Measured in benchmarks/tuner_sampler.py: on the bn table (4-epoch runs, far from the
    # weight-norm equilibrium) 75 % -> 100 % on target; unchanged on every other objective.
    raw_axes: bool = True

    def __post_init__(self) -> None:
        if self.line_search not in LINE_SEARCHES:
            raise TuneError(f"line_search {self.line_search!r} is not one of "
                            f"{list(LINE_SEARCHES)}")
        if self.recheck not in RECHECKS:
            raise TuneError(f"recheck {self.recheck!r} is not one of {list(RECHECKS)}")

    def replace(self, **changes) -> TunerSettings:
        """A copy with ``changes``; a None value keeps the field (an option not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_kwargs(self) -> dict:
        """The keyword arguments of ``FlatDirectionSampler`` and ``tuner.tune.tune``."""
        return dataclasses.asdict(self)


DEFAULT = TunerSettings()
PAPER = TunerSettings(line_search="double", max_level=1, recheck="all", wide=False,
                      raw_axes=False)


def threshold(noise_std: float | None) -> float:
    """The threshold rule NOISE_FRACTION × the seed-to-seed std (0 when unknown)."""
    return 0.0 if noise_std is None else NOISE_FRACTION * noise_std
