"""What a sweep or tune point runs: ``objective(hparams, preset_name, seed)``.

It returns a RunResult (or its dict), a float test accuracy, or None for a diverged run. Worker
processes are spawned (or are Ray tasks), so pass either a module-level callable or a
``"module:function"`` string; the default, ``TrainObjective``, trains ResNet-9.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.runs import ledger
from ridgeline.versions import versions


@dataclass
class TrainObjective:
    """The default objective: ridgeline.cifar.train.train, with CIFAR-10 loaded once per process."""

    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None  # torch threads per worker, so N workers share the cores
    data: object = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "data": None}  # workers load their own copy

    def planned_threads(self) -> int:
        """The torch threads each run of this objective will use."""
        import torch

        return self.threads or torch.get_num_threads()

    def __call__(self, hparams: HParams, preset: str, seed: int, **train_kw):
        """Train one run; ``train_kw`` (hooks, eval_each_epoch) go to ``train``."""
        import torch

        from ridgeline.cifar.train import train

        if self.threads:
            torch.set_num_threads(self.threads)
        if self.data is None:
            from ridgeline.cifar.data import load_cifar10

            self.data = load_cifar10(self.data_root, download=self.download)
        return train(hparams, preset, seed=seed, device=self.device, data=self.data,
                     precision=self.precision, **train_kw)


def planned_threads(objective, executor) -> int | None:
    """The CPU threads each training run will use (None for objectives that do not train), so
    a resumed sweep or tune can say when it differs from the study's earlier runs."""
    if objective is not None and not isinstance(objective, TrainObjective):
        return None
    return getattr(executor, "threads", None) or (objective or TrainObjective()).planned_threads()


def resolve_objective(objective) -> Callable:
    """None → TrainObjective(); "pkg.module:function" → that function; callables as they are."""
    if objective is None:
        return TrainObjective()
    if callable(objective):
        return objective
    module, _, name = str(objective).partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise RidgelineError(f"cannot load objective {objective!r} (want module:function): "
                             f"{e}") from None
    if not callable(fn):
        raise RidgelineError(f"objective {objective!r} is not callable")
    return fn


def as_result(out, hp: HParams, preset: str, seed: int, seconds: float) -> dict:
    """An objective's return value as a RunResult dict (floats/None get the bookkeeping)."""
    if out is not None and not isinstance(out, (int, float)):
        return ledger.result_dict(out)
    diverged = out is None or not math.isfinite(out)
    return {"test_acc": None if diverged else float(out), "train_loss": None,
            "diverged": diverged, "epochs": [], "wall_time": seconds, "train_time": seconds,
            "images_per_sec": 0.0, "hparams": hp.to_dict(), "preset": preset, "seed": seed,
            "device": "n/a", "precision": "n/a", "extras": {}, "versions": versions(),
            "threads": None}


