"""ridgeline: tune BatchNorm ResNets along the flat directions of hyperparameter space."""

from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.presets import PRESETS, Preset, get_preset

__version__ = "0.1.0"
__all__ = ["FlatDirectionSampler", "HParams", "PRESETS", "Preset", "RidgelineError", "get_preset",
           "__version__"]


def __getattr__(name: str):
    """``ridgeline.FlatDirectionSampler`` imports Optuna only when asked for (PEP 562), so
    ``import ridgeline.cifar.train`` needs torch, numpy and tqdm only."""
    if name == "FlatDirectionSampler":
        from ridgeline.tuner.sampler import FlatDirectionSampler

        return FlatDirectionSampler
    raise AttributeError(f"module 'ridgeline' has no attribute {name!r}")
