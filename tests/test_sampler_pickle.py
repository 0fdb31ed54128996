import pickle

import optuna

import ridgeline

START = {"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}


def _objective(trial):
    lr = trial.suggest_float("lr", 1e-6, 10, log=True)
    trial.suggest_float("momentum", 0.0, 0.999)
    trial.suggest_float("weight_decay", 1e-8, 1, log=True)
    return -abs(lr - 0.01)


def test_sampler_pickles_and_the_copy_goes_on_searching():
    """Ray Tune pickles its searcher (and so the sampler) before the first trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = ridgeline.FlatDirectionSampler(start=START, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(_objective, n_trials=3)
    copy = pickle.loads(pickle.dumps(sampler))
    again = optuna.create_study(direction="maximize", sampler=copy)
    again.optimize(_objective, n_trials=3)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert again.trials[0].params == START
