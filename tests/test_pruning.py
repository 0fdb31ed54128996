import math

import optuna
import pytest

from ridgeline.cifar.train import StopTraining, train
from ridgeline.presets import get_preset
from ridgeline.runs.pruning import (
    EPOCHS_ATTR,
    ChanceStop,
    PruningHook,
    epochs_trained,
    study_epochs,
    train_trial,
)
from tests.synthetic import fake_cifar

TINY = get_preset("tiny").hparams.replace(epochs=3, warmup_epochs=1)


@pytest.fixture(scope="module")
def data():
    return fake_cifar()


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def _study(pruner, sampler=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", pruner=pruner, sampler=sampler)


def test_pruned_run_stops_after_its_first_report(data):
    study = _study(AlwaysPrune())
    study.optimize(lambda t: train_trial(t, TINY, "tiny", data=data, device="cpu").test_acc,
                   n_trials=1)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.PRUNED
    assert list(t.intermediate_values) == [1]
    assert t.user_attrs[EPOCHS_ATTR] == 1
    assert study_epochs(study) == 1


def test_unpruned_run_reports_every_epoch_but_the_last_and_finishes(data):
    study = _study(optuna.pruners.NopPruner())
    study.optimize(lambda t: train_trial(t, TINY, "tiny", data=data, device="cpu").test_acc,
                   n_trials=1)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert sorted(t.intermediate_values) == [1, 2]
    assert all(0 <= v <= 1 for v in t.intermediate_values.values())
    assert t.user_attrs[EPOCHS_ATTR] == 3 == study_epochs(study)
    assert 0 <= t.value <= 1


def test_pruning_hook_without_per_epoch_accuracy_reports_nothing(data):
    study = _study(AlwaysPrune())
    trial = study.ask()
    r = train(TINY, "tiny", data=data, device="cpu", hooks=[PruningHook(trial)])
    study.tell(trial, r.test_acc)
    assert study.trials[0].intermediate_values == {}
    assert epochs_trained(r) == 3 and r.test_acc is not None


def test_run_stuck_at_chance_finishes_early_at_chance_accuracy(data):
    r = train(TINY.replace(lr=1e-6), "tiny", data=data, device="cpu", hooks=[ChanceStop()])
    assert not r.diverged and r.test_acc == pytest.approx(0.1)
    assert epochs_trained(r) == 1 and r.extras["run"]["stopped"] == "chance"
    assert abs(r.train_loss - math.log(10)) <= 0.05
    assert r.extras["chance_stop"]["stopped_at"] == 1


def test_learning_run_is_not_stopped(data):
    r = train(TINY, "tiny", data=data, device="cpu", hooks=[ChanceStop()])
    assert epochs_trained(r) == 3 and r.extras["run"]["stopped"] is None
    assert r.extras["chance_stop"]["stopped_at"] is None


def test_chance_stop_recorded_as_complete_trial(data):
    study = _study(optuna.pruners.NopPruner())
    study.optimize(lambda t: train_trial(t, TINY.replace(lr=1e-6), "tiny", data=data,
                                         device="cpu", chance_stop=True).test_acc, n_trials=1)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(0.1)
    assert t.user_attrs[EPOCHS_ATTR] == 1


def test_stop_training_without_accuracy_measures_the_model(data):
    class StopNow:
        name = "stop"

        def on_train_start(self, *a): pass
        def before_step(self, *a): pass
        def after_step(self, *a): pass
        def result(self): return {}

        def on_epoch_end(self, epoch, acc, loss):
            raise StopTraining("test")

    r = train(TINY, "tiny", data=data, device="cpu", hooks=[StopNow()])
    assert epochs_trained(r) == 1 and r.extras["run"]["stopped"] == "test"
    assert 0 <= r.test_acc <= 1 and r.epochs[-1]["test_acc"] == r.test_acc


@pytest.mark.parametrize("kw", [{"after_epoch": 0}, {"tol": 0}, {"classes": 1}])
def test_chance_stop_rejects_bad_settings(kw):
    with pytest.raises(ValueError, match="ChanceStop needs"):
        ChanceStop(**kw)


def test_flat_direction_sampler_never_reproposes_a_pruned_point():
    import ridgeline

    class PruneAfterFirst(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return trial.number > 0

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-6, 10, log=True)
        trial.suggest_float("momentum", 0.0, 0.999)
        trial.suggest_float("weight_decay", 1e-8, 1, log=True)
        trial.report(lr, 0)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return lr

    sampler = ridgeline.FlatDirectionSampler(
        start={"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}, seed=0)
    study = _study(PruneAfterFirst(), sampler)
    study.optimize(objective, n_trials=6)
    pruned = [tuple(sorted(t.params.items())) for t in study.trials
              if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == 5 and len(set(pruned)) == 5
