"""FlatDirectionSampler inside Ray Tune's OptunaSearch, on a local 2-CPU Ray cluster."""
import math

import pytest

pytest.importorskip("ray")
try:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
except ImportError as e:  # ray without its [tune] extra (pandas, pyarrow, ...)
    pytest.skip(f"ray.tune is not importable ({e}): pip install 'ray[tune]'",
                allow_module_level=True)
import optuna  # noqa: E402

import ridgeline  # noqa: E402

START = {"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}
U_BEST = 4e-4  # the toy optimum of u = lr * wd / (1 - momentum) ...
OMR_BEST, WD_BEST = 0.125, 5e-4  # ... and of 1 - momentum and wd, along the flat directions


def u_of(p):
    return p["lr"] * p["weight_decay"] / (1 - p["momentum"])


def toy(config):
    """A smooth peak in log2 of (u, 1 - momentum, wd): u matters most, as for BN networks."""
    score = -(math.log2(u_of(config) / U_BEST) ** 2
              + 0.1 * math.log2((1 - config["momentum"]) / OMR_BEST) ** 2
              + 0.1 * math.log2(config["weight_decay"] / WD_BEST) ** 2)
    return {"score": score}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_optuna_search_runs_the_flat_direction_sampler(ray_cluster, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"lr": optuna.distributions.FloatDistribution(1e-6, 10, log=True),
             "momentum": optuna.distributions.FloatDistribution(0.0, 0.999),
             "weight_decay": optuna.distributions.FloatDistribution(1e-8, 1, log=True)}
    search = OptunaSearch(space=space, metric="score", mode="max",
                          sampler=ridgeline.FlatDirectionSampler(start=START, seed=0))
    tuner = tune.Tuner(toy, tune_config=tune.TuneConfig(search_alg=search, num_samples=16,
                                                        max_concurrent_trials=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    results = tuner.fit()
    points = [r.config for r in results]  # in trial order
    assert len(points) == 16 and not results.errors
    assert points[0] == pytest.approx(START)
    # the first line search moves u alone: lr changes, momentum and wd stay put
    assert all(p["momentum"] == pytest.approx(0.5) and p["weight_decay"] == pytest.approx(1e-2)
               for p in points[:3])
    # later moves change momentum or wd while holding u fixed (the flat directions)
    flat = [p for p in points if u_of(p) == pytest.approx(u_of(points[-1]), rel=1e-6)
            and (p["momentum"], p["weight_decay"]) != (0.5, 1e-2)]
    assert flat, "no move along a flat direction (u held, momentum or wd changed)"
    best = results.get_best_result(metric="score", mode="max").metrics["score"]
    assert best > toy(START)["score"] + 10  # far better than the start
