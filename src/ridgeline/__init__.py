"""ridgeline: tune BatchNorm ResNets along the flat directions of hyperparameter space."""

from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.presets import PRESETS, Preset, get_preset

__version__ = "0.1.0"
__all__ = ["HParams", "PRESETS", "Preset", "RidgelineError", "get_preset", "__version__"]
