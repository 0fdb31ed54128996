"""ridgeline.FlatDirectionSampler: the tuner as an Optuna sampler (tuner/sampler.py)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

import ridgeline
from ridgeline.errors import RidgelineError, TuneError
from ridgeline.tuner.sampler import DIVERGED_ATTR, STOPPED_ATTR

optuna.logging.set_verbosity(optuna.logging.ERROR)
BAD = {"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}


def u_of(p):
    return p["lr"] * p["weight_decay"] / (1 - p["momentum"])


def landscape(p, diverge=math.inf):
    """Steep in u, shallow along 1−ρ and α at fixed u; peak 0 at u=2e-3, 1−ρ=0.1, α=5e-4."""
    if p["lr"] > diverge:
        return math.nan
    return -(math.log2(u_of(p) / 2e-3) ** 2 + 0.2 * math.log2((1 - p["momentum"]) / 0.1) ** 2
             + 0.2 * math.log2(p["weight_decay"] / 5e-4) ** 2)


def suggest(trial, seed=True):
    p = {"lr": trial.suggest_float("lr", 1e-5, 100, log=True),
         "momentum": trial.suggest_float("momentum", 0.0, 0.9999),
         "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1, log=True)}
    if seed:
        p["seed"] = trial.suggest_int("seed", 0, 100)
    return p


def objective(trial):
    return landscape(suggest(trial))


def sampler(**kw):
    return ridgeline.FlatDirectionSampler(start=BAD, min_improvement=0.0, seed=0, **kw)


def test_usage_as_documented_converges_and_stops():
    study = optuna.create_study(direction="maximize", sampler=sampler())
    study.optimize(objective, n_trials=200)
    assert study.best_value > -0.5
    assert study.user_attrs[STOPPED_ATTR].startswith("converged")
    assert len(study.trials) < 200  # study.stop() ended it


def test_moves_stay_on_the_lattice_and_hold_u():
    study = optuna.create_study(direction="maximize", sampler=sampler(max_level=1))
    study.optimize(objective, n_trials=40)
    u0 = u_of(BAD)
    held = 0
    for a, b in zip(study.trials, study.trials[1:], strict=False):
        k = math.log2(u_of(b.params) / u0)
        assert abs(k - round(k)) < 1e-9
        if a.params["momentum"] != b.params["momentum"] and u_of(a.params) == pytest.approx(
                u_of(b.params), rel=1e-12):
            held += 1
    assert held >= 2  # 1−ρ moves at fixed u happened


def test_resume_with_a_new_sampler_repeats_nothing():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(direction="maximize", sampler=sampler(), storage=storage,
                                study_name="s")
    study.optimize(objective, n_trials=12)
    again = optuna.load_study(study_name="s", storage=storage, sampler=sampler())
    again.optimize(objective, n_trials=100)
    points = [tuple(sorted(t.params.items())) for t in again.trials]
    assert len(points) == len(set(points))
    one = optuna.create_study(direction="maximize", sampler=sampler())
    one.optimize(objective, n_trials=100)
    assert [t.params for t in one.trials] == [t.params for t in again.trials]


def test_nan_is_diverged_and_never_proposed_again():
    def obj(trial):
        return landscape(suggest(trial), diverge=0.05)

    study = optuna.create_study(direction="maximize", sampler=sampler())
    study.optimize(obj, n_trials=60)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed
    assert set(study.user_attrs[DIVERGED_ATTR]) >= {t.number for t in failed[:-1]}
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(points) == len(set(points))
    assert study.best_params["lr"] <= 0.05


def test_a_raise_is_proposed_again():
    calls = []

    def obj(trial):
        p = suggest(trial)
        calls.append(p)
        if len(calls) == 3:
            raise RuntimeError("the process died")
        return landscape(p)

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(direction="maximize", sampler=sampler(), storage=storage)
    with pytest.raises(RuntimeError):
        study.optimize(obj, n_trials=10)
    resumed = optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler())
    resumed.optimize(obj, n_trials=1)
    assert calls[3] == calls[2]
    assert DIVERGED_ATTR not in resumed.user_attrs


def test_running_trials_get_distinct_points_and_decisions_match():
    """Two workers by hand: the second ask while the first runs gets another point."""
    study = optuna.create_study(direction="maximize", sampler=sampler())
    seen = []
    pending = []
    for _ in range(30):
        while len(pending) < 2:
            t = study.ask()
            p = suggest(t)
            assert p not in [q for _, q in pending]
            pending.append((t, p))
        t, p = pending.pop(0)
        study.tell(t, landscape(p))
        seen.append(p)
    alone = optuna.create_study(direction="maximize", sampler=sampler())
    alone.optimize(objective, n_trials=60)
    assert study.best_value >= alone.best_value - 0.2


def test_n_jobs_threads():
    study = optuna.create_study(direction="maximize", sampler=sampler())
    study.optimize(objective, n_trials=30, n_jobs=2)
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(points) == len(set(points))


def test_other_params_go_to_the_independent_sampler():
    def obj(trial):
        p = suggest(trial)
        width = trial.suggest_categorical("width", [16, 32])
        return landscape(p) + (0.01 if width == 32 else 0.0)

    study = optuna.create_study(direction="maximize", sampler=sampler())
    study.optimize(obj, n_trials=10)
    assert {t.params["width"] for t in study.trials} <= {16, 32}


def test_raw_coordinates():
    s = ridgeline.FlatDirectionSampler(start=BAD, invariants=(), seed=0)
    study = optuna.create_study(direction="maximize", sampler=s)
    study.optimize(objective, n_trials=5)
    assert study.trials[1].params["momentum"] == 0.5  # λ moved alone


@pytest.mark.parametrize("kw, match", [
    ({"invariants": ("lr*batch_size",)}, "unknown name"),
    ({"invariants": ("lr+weight_decay",)}, "not a monomial|not a product"),
    ({"invariants": ("lr*weight_decay", "lr**2*weight_decay**2")}, "not linearly independent"),
    ({"start": {**BAD, "momentum": 1.0}}, "momentum"),
    ({"line_search": "golden"}, "line_search"),
])
def test_bad_configuration_is_one_line(kw, match):
    args = {"start": BAD, **kw}
    with pytest.raises(RidgelineError, match=match) as e:
        ridgeline.FlatDirectionSampler(**args)
    assert "\n" not in str(e.value)


def test_a_start_outside_the_suggested_range_fails_at_the_first_trial():
    def obj(trial):
        trial.suggest_float("lr", 0.01, 1, log=True)
        return 0.0

    study = optuna.create_study(direction="maximize", sampler=sampler())
    with pytest.raises(TuneError, match=r"lr=0.001 is outside .*\[0.01, 1\]"):
        study.optimize(obj, n_trials=1)
