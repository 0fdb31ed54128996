"""The tuner's decision settings, defined once.

``tuner.descent`` defaults to the search as Page published it (PAPER); ``tune_preset``,
`ridgeline reproduce` and the reproduce report's replay of a tune all use
``default_settings(preset)``, so the replay makes exactly the decisions the tune made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ridgeline.errors import TuneError
from ridgeline.presets import Preset

__all__ = ["LINE_SEARCHES", "NOISE_FRACTION", "PAPER", "TunerSettings", "default_settings",
           "threshold", "threshold_note"]

LINE_SEARCHES = ("double", "accelerate")  # tuner.descent's module docstring describes both
# min_improvement in units of the preset's noise_std: docs/tuner.md measures 0 to 1.
NOISE_FRACTION = 0.5


@dataclass(frozen=True)
class TunerSettings:
    """How the search judges a step: which line search, and by how much a step must beat the
    best (test accuracy as a fraction) to be taken."""

    line_search: str = "double"
    min_improvement: float = 0.0

    def __post_init__(self) -> None:
        if self.line_search not in LINE_SEARCHES:
            raise TuneError(f"line_search {self.line_search!r} is not one of "
                            f"{list(LINE_SEARCHES)}")

    def replace(self, **changes) -> TunerSettings:
        """A copy with ``changes``; a None value keeps the field (an option not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_kwargs(self) -> dict:
        """The keyword arguments of ``tuner.descent.tune``."""
        return dataclasses.asdict(self)


PAPER = TunerSettings()  # Page's search: ×2 / ÷2, any improvement is taken


def threshold(noise_std: float | None) -> float:
    """The threshold rule: NOISE_FRACTION × the seed-to-seed std; 0 when the std is unknown."""
    return 0.0 if noise_std is None else NOISE_FRACTION * noise_std


def default_settings(preset: Preset) -> TunerSettings:
    """The measured best of docs/tuner.md: the accelerating line search and threshold()."""
    return TunerSettings(line_search="accelerate", min_improvement=threshold(preset.noise_std))


def threshold_note(preset: Preset) -> str | None:
    """What to tell the user when the preset states no noise_std (threshold 0), else None."""
    if preset.noise_std is not None:
        return None
    return (f"{preset.name} states no noise_std, so the tuner's threshold is 0 (any gain "
            f"moves the search)")
