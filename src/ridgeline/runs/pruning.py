"""Spend less compute on lost runs: Optuna pruning and a stop for runs stuck at chance.

Two training hooks for ``ridgeline.cifar.train.train(hooks=...)`` (they use its optional
``on_epoch_end``; Optuna stays out of ``ridgeline.cifar``):

* ``PruningHook(trial)`` reports each epoch's test accuracy with ``trial.report(acc, epoch)``
  (train with ``eval_each_epoch=True``) and raises ``optuna.TrialPruned`` when
  ``trial.should_prune()``: the study's pruner decides.
* ``ChanceStop()`` ends a run whose mean train loss after epoch ``after_epoch`` is still within
  ``tol`` of ln(classes), the loss of a uniform guess, as a *finished* run at chance accuracy
  (1/classes): a value the tuner can rank, neither a crash nor a NaN. Off by default in
  ``train_trial``: replayed on benchmarks/results/bn_table.json from Page's bad start, every
  early run of the search is within 0.05 of ln 10 after epoch 1 (yet ends above chance), so
  all of them tie at chance and the search stops at the start (docs/tuner.md, "Pruning").

Compute is counted in epochs actually trained: ``epochs_trained(result)`` for a run, and
``study_epochs(study)`` for a study whose objective recorded them with ``record_epochs``.
"""

from __future__ import annotations

import math

import optuna

from ridgeline.cifar.train import StopTraining

EPOCHS_ATTR = "epochs_trained"


class PruningHook:
    """Report per-epoch test accuracy to an Optuna trial; prune when its pruner says so."""

    name = "pruning"

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.reported: list[tuple[int, float]] = []

    def on_train_start(self, model, optimizer, hparams, total_steps) -> None:
        pass

    def before_step(self, step, model, lr) -> None:
        pass

    def after_step(self, step, model, lr, loss) -> None:
        pass

    def on_epoch_end(self, epoch: int, test_acc: float | None, train_loss: float) -> None:
        if test_acc is None:
            return  # nothing to report: train with eval_each_epoch=True
        self.trial.report(test_acc, epoch)
        self.reported.append((epoch, test_acc))
        if self.trial.should_prune():
            self.trial.set_user_attr(EPOCHS_ATTR, epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at test accuracy "
                                     f"{test_acc:.4f}")

    def result(self) -> dict:
        return {"reported": self.reported}


class ChanceStop:
    """End a run still at chance after ``after_epoch`` epochs as finished at 1/classes."""

    name = "chance_stop"

    def __init__(self, after_epoch: int = 1, tol: float = 0.05, classes: int = 10) -> None:
        if after_epoch < 1 or not tol > 0 or classes < 2:
            raise ValueError(f"ChanceStop needs after_epoch >= 1, tol > 0 and classes >= 2, "
                             f"got {after_epoch}, {tol}, {classes}")
        self.after_epoch, self.tol, self.classes = after_epoch, tol, classes
        self.stopped_at: int | None = None

    def on_train_start(self, model, optimizer, hparams, total_steps) -> None:
        pass

    def before_step(self, step, model, lr) -> None:
        pass

    def after_step(self, step, model, lr, loss) -> None:
        pass

    def on_epoch_end(self, epoch: int, test_acc: float | None, train_loss: float) -> None:
        if epoch == self.after_epoch and abs(train_loss - math.log(self.classes)) <= self.tol:
            self.stopped_at = epoch
            raise StopTraining("chance", test_acc=1.0 / self.classes)

    def result(self) -> dict:
        return {"stopped_at": self.stopped_at, "tol": self.tol}


def epochs_trained(result) -> int:
    """Epochs a RunResult (or its dict) actually trained: fewer than planned when stopped."""
    epochs = result["epochs"] if isinstance(result, dict) else result.epochs
    return len(epochs)


def record_epochs(trial: optuna.Trial, result) -> int:
    """Store ``epochs_trained(result)`` on ``trial`` (see ``study_epochs``); returns it."""
    n = epochs_trained(result)
    trial.set_user_attr(EPOCHS_ATTR, n)
    return n


def study_epochs(study: optuna.Study) -> int:
    """Total epochs trained by the study's finished and pruned trials (those that recorded
    them)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(int(t.user_attrs.get(EPOCHS_ATTR, 0))
               for t in study.get_trials(deepcopy=False, states=states))


def train_trial(trial: optuna.Trial, hparams, preset="cpu-mini", *, prune: bool = True,
                chance_stop: bool = False, **train_kw):
    """Train ``hparams`` as ``trial``: per-epoch reports and pruning, the chance stop, and the
    epochs trained recorded on the trial. Returns the RunResult (test_acc None: diverged)."""
    from ridgeline.cifar.train import train

    hooks = list(train_kw.pop("hooks", ()))
    if prune:
        hooks.append(PruningHook(trial))
    if chance_stop:
        hooks.append(ChanceStop())
    each_epoch = train_kw.pop("eval_each_epoch", False) or prune
    result = train(hparams, preset, hooks=hooks, eval_each_epoch=each_epoch, **train_kw)
    record_epochs(trial, result)
    return result
