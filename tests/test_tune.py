import math
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ridgeline.runs import ledger as st
from ridgeline.tuner import report as tuner_report
from ridgeline.tuner.invariants import paper_system
from ridgeline.tuner.sampler import SPECULATION_PER_WORKER
from ridgeline.tuner.settings import DEFAULT
from ridgeline.tuner.tune import TuneError, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)

SYSTEM = paper_system()
U = SYSTEM.names[0]
START = {"lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 512}
BAD_START = {"lr": 0.001, "momentum": 0.5, "weight_decay": 0.01, "batch_size": 512}
REF = SYSTEM.to_coords(START)


def offsets(params):
    """Position in doublings from START along (u, 1-momentum, weight_decay)."""
    coords = SYSTEM.to_coords(params)
    return [math.log2(coords[n] / REF[n]) for n in SYSTEM.names]


def bowl(optimum, curvature=(1.0, 1.0, 1.0)):
    def objective(params, seed):
        d = offsets(params)
        return -sum(k * (x - o) ** 2 for k, x, o in zip(curvature, d, optimum, strict=True))

    return objective


def noisy(params, seed):
    """A ridge-like landscape plus noise that is a fixed function of (params, seed)."""
    d = offsets(params)
    key = repr([round(x, 6) for x in d] + [seed]).encode()
    noise = (zlib.crc32(key) / 2**32 - 0.5) * 0.2
    return 94 - 0.3 * (d[0] - 2.3) ** 2 - 0.1 * (d[1] + 1.4) ** 2 - 0.1 * (d[2] - 0.6) ** 2 + noise


class Interrupt(Exception):
    pass


class Counting:
    """Counts objective calls; raises Interrupt on call number ``fail_at`` and later ones."""

    def __init__(self, objective, fail_at=None):
        self.objective, self.fail_at = objective, fail_at
        self.started = self.returned = 0
        self.lock = threading.Lock()

    def __call__(self, params, seed):
        with self.lock:
            self.started += 1
            if self.fail_at is not None and self.started >= self.fail_at:
                raise Interrupt
        value = self.objective(params, seed)
        with self.lock:
            self.returned += 1
        return value


def test_exact_number_of_evaluations_on_a_separable_bowl():
    # Optimum 2 doublings up in u and 1 down in 1-momentum, f = -|d - (2, -1, 0)|^2.
    #  1 start (0,0,0)
    #  u:  2 (1,0,0) better, 3 (2,0,0) better, 4 (3,0,0) worse          -> best (2,0,0)
    #  1-m: 5 (2,1,0) worse, 6 (2,-1,0) better, 7 (2,-2,0) worse        -> best (2,-1,0)
    #  wd: 8 (2,-1,1) worse, 9 (2,-1,-1) worse
    #  u again from the new best: 10 (3,-1,0) worse, 11 (1,-1,0) worse
    #  1-m's neighbours are known (7 and the old best 5's... no: (2,0,0) = run 3): no calls
    #  -> a full cycle without improvement: stop after 11 evaluations.
    objective = Counting(bowl((2, -1, 0)))
    result = tune(objective, START)
    assert objective.returned == result.n_runs == 11
    assert result.stopped == "converged"
    assert [round(x) for x in offsets(result.best)] == [2, -1, 0]
    assert [r.run for r in result.history if r.accepted] == [1, 2, 3, 6]
    assert result.best["batch_size"] == 512


@pytest.mark.parametrize("line_search", ["double", "accelerate"])
def test_u_is_held_fixed_while_momentum_or_weight_decay_move(line_search):
    result = tune(noisy, BAD_START, min_improvement=0.05, line_search=line_search)
    best_u, moved = None, 0
    for run in result.history:
        u = run.params["lr"] * run.params["weight_decay"] / (1 - run.params["momentum"])
        if run.coordinate in ("1-momentum", "weight_decay"):
            assert u == pytest.approx(best_u, rel=1e-12)
            moved += 1
        if run.accepted:
            best_u = u
    assert moved >= 4
    if line_search == "accelerate":  # it really took steps longer than one doubling
        assert any(r.factor and r.factor > 2 for r in result.history)


def test_min_improvement_blocks_small_steps():
    # Each doubling of u gains 0.01 < 0.05: only the 2 neighbours per coordinate are tried.
    slope = lambda params, seed: 0.01 * offsets(params)[0]  # noqa: E731
    result = tune(slope, START, min_improvement=0.05)
    assert result.n_runs == 7 and result.best == START


def test_max_evals_stops_the_search():
    result = tune(bowl((9, 0, 0)), START, max_evals=5)
    assert result.stopped == "max_evals" and result.n_runs == 5


def test_diverged_values_never_crash_and_never_win():
    def objective(params, seed):
        d = offsets(params)
        if d[0] > 1.5:
            return math.nan
        if d[2] < -0.5:
            return None
        if d[1] > 0.5:
            return math.inf
        return -((d[0] - 3) ** 2) - (d[2] + 2) ** 2

    result = tune(objective, START)
    study = result.study
    diverged = [r for r in result.history if r.diverged]
    assert len(diverged) >= 3
    assert not any(r.accepted for r in diverged)
    assert all(r.value == -math.inf for r in diverged)
    stored = [t for t in study.trials if t.user_attrs["diverged"]]
    assert len(stored) == len(diverged)
    assert all(t.state == TrialState.COMPLETE and st.is_diverged(t) for t in stored)
    assert all(st.outcome(t) == -math.inf for t in stored)
    assert [round(x) for x in offsets(result.best)] == [1, 0, 0]


def test_a_diverged_start_is_left_for_any_finite_value():
    objective = lambda params, seed: math.nan if offsets(params)[0] > -0.5 else 1.0  # noqa: E731
    result = tune(objective, START)
    assert result.history[0].diverged and math.isfinite(result.best_value)


def test_momentum_stays_in_0_1():
    # Prefers 1-momentum = 0.1 * 2**5 = 3.2, i.e. momentum < 0.
    result = tune(bowl((0, 5, 0)), START)
    assert all(0 <= r.params["momentum"] < 1 for r in result.history)
    assert 1 - result.best["momentum"] == pytest.approx(0.8)  # 1.6 is never evaluated


def test_user_bounds_are_respected_and_u_slides_past_them():
    # Prefers u 2**6 times larger; lr may not exceed 2 (u 2.32 doublings up at this 1-ρ, α).
    # Past that, a step of u slides along 1-ρ and α instead of stopping at the box.
    result = tune(bowl((6, 0, 0), curvature=(1.0, 0.01, 0.01)), START, bounds={"lr": (None, 2.0)})
    assert all(r.params["lr"] <= 2.0 for r in result.history)
    assert round(offsets(result.best)[0]) == 6
    slid = [r for r in result.history if r.coordinate == U and offsets(r.params)[1:] != [0, 0]]
    assert slid and all(r.params["lr"] <= 2.0 for r in slid)


def test_a_step_to_plain_sgd_is_not_run():
    # From momentum 0.5, ×2 of 1-ρ is momentum 0: the end of the domain, never trained.
    start = {**START, "momentum": 0.5}
    result = tune(bowl((0, 3, 0)), start)
    assert all(r.params["momentum"] > 0 for r in result.history)


def test_bad_configuration_is_rejected():
    with pytest.raises(TuneError, match="outside"):
        tune(noisy, START, bounds={"lr": (1.0, None)})
    with pytest.raises(TuneError, match="unknown coordinate"):
        tune(noisy, START, order=["lr"])


def _storage(kind, tmp_path):
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'tune.db'}"
    if kind == "journal":
        return optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "tune.log")))
    return optuna.storages.InMemoryStorage()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "journal"])
def test_resume_repeats_nothing(kind, tmp_path):
    reference = tune(noisy, START, min_improvement=0.05)
    storage = _storage(kind, tmp_path)
    objective = Counting(noisy, fail_at=8)
    with pytest.raises(Interrupt):
        tune(objective, START, storage=storage, study_name="t", min_improvement=0.05)
    objective.fail_at = None
    result = tune(objective, START, storage=storage, study_name="t", min_improvement=0.05)

    assert result.history == reference.history
    assert (result.best, result.best_value) == (reference.best, reference.best_value)
    assert objective.returned == reference.n_runs  # each distinct point evaluated once
    assert objective.started == reference.n_runs + 1  # plus the call that was interrupted
    assert result.n_replayed == 7 and result.n_calls == reference.n_runs - 7
    states = [t.state for t in result.study.trials]
    assert states.count(TrialState.FAIL) == 1
    assert states.count(TrialState.COMPLETE) == reference.n_runs
    (failed,) = [t for t in result.study.trials if t.state == TrialState.FAIL]
    assert "Interrupt" in failed.user_attrs[st.FAILURE_ATTR]


def test_a_dead_process_s_running_trial_is_failed_and_run_again(tmp_path):
    storage = st.open_storage(tmp_path / "t.journal")
    reference = tune(bowl((1, 0, 0)), START)
    study = optuna.create_study(storage=storage, study_name="t", direction="maximize")
    lost = study.ask({"lr": FloatDistribution(1e-30, 1e30, log=True),
                      "momentum": FloatDistribution(0.0, 1 - 1e-9),
                      "weight_decay": FloatDistribution(1e-30, 1e30, log=True),
                      "replicate": IntDistribution(0, 2**31 - 1)}, )
    lost.set_user_attr(st.OWNER_ATTR, {**st.this_process(), "pid": 2**22 + 1, "trial": 0})
    objective = Counting(bowl((1, 0, 0)))
    result = tune(objective, START, storage=storage, study_name="t")
    assert study.trials[lost.number].state == TrialState.FAIL
    assert result.history == reference.history and objective.returned == result.n_runs


@pytest.mark.parametrize("replicates", [1, 2])
def test_parallel_equals_sequential(replicates):
    sequential = tune(noisy, BAD_START, min_improvement=0.05, replicates=replicates)
    parallel = tune(noisy, BAD_START, min_improvement=0.05, replicates=replicates,
                    workers=3)
    assert parallel.history == sequential.history
    assert parallel.n_speculative > 0
    trials = parallel.study.trials
    assert parallel.n_calls == len(trials) == (replicates * parallel.n_runs
                                               + parallel.n_speculative)
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_one_slow_worker_neither_changes_the_result_nor_lets_the_other_run_ahead():
    """CI failure: the first run of the ×2 step took seconds (a worker process starting on
    a busy host) while the other worker ran its whole losing branch, and the trial cap
    ended the tune after 4 of its 8 runs. Speculation is now bounded (2 per running trial)."""
    slow_lr = 2 * BAD_START["lr"]

    def skewed(params, seed):
        if math.isclose(params["lr"], slow_lr) and seed == 0:
            time.sleep(1.5)  # the other worker is far faster than this, even under load
        return noisy(params, seed)

    sequential = tune(noisy, BAD_START, max_evals=8, line_search="double",
                      settings=DEFAULT)
    parallel = tune(skewed, BAD_START, max_evals=8, line_search="double",
                    settings=DEFAULT, workers=2)
    assert parallel.history == sequential.history and parallel.stopped == "max_evals"
    assert 0 < parallel.n_speculative <= 2 * SPECULATION_PER_WORKER


def test_parallel_with_a_caller_executor_and_an_interrupted_resume():
    reference = tune(noisy, BAD_START, min_improvement=0.05)
    storage = optuna.storages.InMemoryStorage()
    with ThreadPoolExecutor(2) as pool, pytest.raises(Interrupt):
        tune(Counting(noisy, fail_at=10), BAD_START, storage=storage, study_name="s",
             min_improvement=0.05, workers=2, executor=pool)
    result = tune(noisy, BAD_START, storage=storage, study_name="s", min_improvement=0.05,
                  workers=2)
    assert result.history == reference.history
    assert not [t for t in result.study.trials if t.state == TrialState.RUNNING]


def test_pages_table_is_one_row_per_run_with_the_new_bests_marked():
    result = tune(bowl((2, -1, 0)), START)
    cells = tuner_report.table(result)
    assert len(cells) == result.n_runs and {len(c) for c in cells} == {len(tuner_report.HEADER)}
    assert cells[0][:2] == ["1", "start"] and cells[0][-1].endswith("** *")
    lines = tuner_report.markdown_table(result).splitlines()
    assert lines[0] == "| run | step | λ | ρ | α | λα/(1−ρ) | test accuracy |"
    assert len(lines) == result.n_runs + 2
    plain = tuner_report.table(result, accuracy=lambda v: "x", new_best="{} (new best)")
    assert plain[0][-1] == "x (new best)"


def u_offsets(result):
    return [round(offsets(r.params)[0], 6) for r in result.history if r.coordinate in (None, U)]


def test_accelerate_exact_number_of_evaluations():
    # Optimum 6.3 doublings up in u, f = -|d - (6.3, 0, 0)|^2.
    #  u: 1 start (0), 2 (1) better, 3 (3) better, 4 (7) better, 5 (15) worse: steps ×2, ×4,
    #     ×16, ×256. The parabola through 3, 7, 15 peaks at 6.3: 6 (6) better. Through 3, 6, 7
    #     it peaks at 6 again, which is known: the line search ends.
    #  1-m: 7, 8 worse; wd: 9, 10 worse.
    #  u again, as its neighbour 5 is not known yet: (7) is, 11 (5) worse -> stop: 11 runs, one
    #  fewer than "double" needs (12), which walks 0, 1, ..., 7.
    objective = Counting(bowl((6.3, 0, 0)))
    result = tune(objective, START, line_search="accelerate")
    assert objective.returned == result.n_runs == 11 and result.stopped == "converged"
    assert u_offsets(result) == [0, 1, 3, 7, 15, 6, 5]
    assert [r.factor for r in result.history[1:6]] == [2, 4, 16, 256, 0.5]
    assert [round(x) for x in offsets(result.best)] == [6, 0, 0]
    plain = tune(bowl((6.3, 0, 0)), START)
    assert plain.n_runs == 12 and plain.best == result.best


def test_accelerate_bisects_past_a_diverged_end():
    # Beyond 10 doublings up in u the run diverges: no parabola through a diverged end, so the
    # bracket (3, 7, 15) is bisected: 11 diverges, 9 loses; then the parabola through 3, 7, 9
    # finds 6.
    def objective(params, seed):
        return math.nan if offsets(params)[0] > 10 else bowl((6.3, 0, 0))(params, seed)

    result = tune(objective, START, line_search="accelerate")
    assert u_offsets(result)[:8] == [0, 1, 3, 7, 15, 11, 9, 6]
    assert not any(r.accepted for r in result.history if r.diverged)
    assert [round(x) for x in offsets(result.best)] == [6, 0, 0]


def test_accelerate_pulls_probes_into_the_bounds():
    # lr may not exceed 2 (u 2.32 doublings up): ×4 from u offset 1 (lr 3.2) is out of bounds,
    # so the bracket (0, 1, 3) has no parabola and its middle, 2 (lr 1.6), is probed.
    result = tune(bowl((6, 0, 0)), START, bounds={"lr": (None, 2.0)},
                  line_search="accelerate")
    assert all(r.params["lr"] <= 2.0 for r in result.history)
    assert result.best["lr"] == pytest.approx(1.6)



def test_accelerate_parallel_equals_sequential():
    sequential = tune(noisy, BAD_START, min_improvement=0.05,
                      line_search="accelerate")
    parallel = tune(noisy, BAD_START, min_improvement=0.05,
                    line_search="accelerate", workers=3)
    assert parallel.history == sequential.history and parallel.n_speculative > 0


def test_unknown_line_search_is_rejected():
    with pytest.raises(TuneError, match="line_search"):
        tune(noisy, START, line_search="golden")


def test_on_run_sees_each_judged_run_once():
    seen = []
    result = tune(bowl((2, -1, 0)), START, on_run=seen.append)
    assert seen == result.history and [r.run for r in seen] == list(range(1, 12))


def test_raw_axes_are_each_raw_parameter_at_the_others_fixed():
    from ridgeline.tuner.descent import _raw_axes

    axes = {d.name: d.vector for d in _raw_axes(SYSTEM)}
    # (u, 1-momentum, weight_decay): 1-momentum x2 at fixed lr, wd is u /2; wd x2 is u x2.
    assert axes == {"1-momentum (raw)": (-1, 1, 0), "weight_decay (raw)": (1, 0, 1)}


@pytest.mark.parametrize("raw_axes", [False, True])
def test_refining_with_raw_axes_reaches_an_optimum_no_coordinate_step_can(raw_axes):
    # A narrow valley along u = wd: any one-coordinate step from the start loses, the raw
    # weight-decay axis (u x2, wd x2 at fixed lr and momentum) gains.
    def valley(params, seed):
        d = offsets(params)
        return -10 * (d[0] - d[2]) ** 2 - (d[0] + d[2] - 2) ** 2 - d[1] ** 2

    result = tune(valley, START, max_level=2, raw_axes=raw_axes)
    raw = [r for r in result.history if (r.coordinate or "").endswith("(raw)")]
    if not raw_axes:
        assert not raw and [round(x) for x in offsets(result.best)] == [0, 0, 0]
        return
    assert [round(x) for x in offsets(result.best)] == [1, 0, 1]
    moved = next(r for r in raw if r.coordinate == "weight_decay (raw)")
    assert moved.params["lr"] == pytest.approx(START["lr"], rel=1e-12)
    assert moved.params["momentum"] == pytest.approx(START["momentum"], rel=1e-12)
    assert moved.params["weight_decay"] == pytest.approx(2 * START["weight_decay"], rel=1e-12)
