"""`ridgeline reproduce`: the budget planner, resumption on a fake objective, the CLI."""

import datetime
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from ridgeline.cli import main
from ridgeline.errors import RidgelineError
from ridgeline.presets import PRESETS
from ridgeline.reproduce import pipeline as reproduce
from ridgeline.reproduce import plan as planning
from ridgeline.runs import ledger as st
from ridgeline.science import experiments
from tests.synthetic import call_log, fake_cifar, log_call

FAKE = "tests.test_reproduce:fake_objective"


def fake_objective(hp, preset, seed):
    """Ridges along λα/(1−ρ) and λ/N (best at the tiny preset's values). Appends each call to
    $REPRO_LOG if set; raises KeyboardInterrupt instead of running call number $REPRO_STOP_AT."""
    log = call_log("REPRO")
    x_u = math.log2(hp.lr * hp.weight_decay / (1 - hp.momentum) / 1e-3)
    x_n = math.log2(hp.lr / hp.batch_size / (0.2 / 32))
    x_a = math.log2(hp.weight_decay / 5e-4)
    acc = max(0.1, 0.9 - 0.01 * x_u**2 - 0.01 * x_n**2 - 0.002 * x_a**2 + 0.001 * seed)
    log_call(log, hp.lr, hp.momentum, hp.weight_decay, hp.batch_size, seed)
    return acc


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_LOG", str(tmp_path / "calls.log"))
    monkeypatch.delenv("REPRO_STOP_AT", raising=False)
    monkeypatch.delenv(st.STORAGE_ENV, raising=False)
    return tmp_path


def calls(tmp_path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.is_file() else []


# ----------------------------------------------------------------------------- budget, plan

@pytest.mark.parametrize("text, runs, seconds", [
    ("120", 120, None), ("3h", None, 10800), ("1.5h", None, 5400), ("90m", None, 5400),
    ("90 min", None, 5400), ("5400s", None, 5400), ("2 hours", None, 7200),
])
def test_budget_strings(text, runs, seconds):
    b = planning.parse_budget(text)
    assert (b.runs, b.seconds) == (runs, seconds)


@pytest.mark.parametrize("text", ["3x", "", "h", "1.5", "-2", "0", "0h", "3 h 20"])
def test_bad_budget_strings_are_errors(text):
    with pytest.raises(RidgelineError, match="--budget"):
        planning.parse_budget(text)


def plan(budget: str, preset="cpu-mini", seconds=90.0) -> planning.Plan:
    return planning.make_plan(preset, planning.parse_budget(budget), seconds, "test")


def test_cpu_mini_plans_at_three_hours_and_at_sixty_runs():
    p = plan("3h")  # 120 runs at 90 s
    assert (p.steps, p.seeds, p.tune, p.diagnostics) == ((6, 4), 1, (22, 10), ())
    assert p.cost == 104 and "not run (budget)" in p.describe()
    p = plan("60")
    assert (p.steps, p.seeds, p.tune, p.diagnostics) == ((4, 3), 1, (12, 6), ())


def test_ladder_only_adds_and_costs_more_at_each_rung():
    rungs = planning.ladder("cpu-mini", "x", 90.0, "test")
    for lo, hi in zip(rungs, rungs[1:], strict=False):
        assert hi.cost > lo.cost
        assert hi.steps >= lo.steps and hi.seeds >= lo.seeds
        assert all(b >= a for a, b in zip(lo.tune, hi.tune, strict=True))
        assert set(hi.diagnostics) >= set(lo.diagnostics)
    assert rungs[0].steps == (4, 3) and any(r.steps == (6, 5) for r in rungs)
    assert {r.seeds for r in rungs} == {1, 2, 3}


def test_plan_is_monotone_in_budget_and_fits_it():
    previous = None
    for runs in range(36, 800, 7):
        p = plan(str(runs))
        assert p.cost <= runs
        if previous is not None:
            assert p.cost >= previous.cost and p.steps >= previous.steps
            assert p.seeds >= previous.seeds and p.tune >= previous.tune
            assert set(p.diagnostics) >= set(previous.diagnostics)
        previous = p
    hours = [plan(f"{h}h") for h in (1, 2, 3, 6, 12, 24, 48)]
    assert [p.cost for p in hours] == sorted(p.cost for p in hours)
    assert plan("1000h").cost == planning.ladder("cpu-mini", "x", 90.0, "t")[-1].cost


def test_a_budget_below_the_smallest_plan_names_the_minimum():
    with pytest.raises(RidgelineError, match="smallest plan, 36 runs.*at least 36 runs or 54 min"):
        plan("35")


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS
                                    if PRESETS[p].hparams.optimizer == "sgd"))
def test_every_rung_is_a_valid_grid_of_every_preset(preset):  # AdamW's: test_adamw.py
    for rung in planning.ladder(preset, "x", 1.0, "test"):
        assert len(rung.grids()) == 3


def test_cost_is_measured_from_finished_runs_else_the_presets_stated_estimate(env):
    journal = env / "s.journal"
    seconds, source = planning.estimate_run_seconds(journal, "cpu-mini")
    assert seconds == PRESETS["cpu-mini"].run_seconds == 90.0
    assert source.startswith("the cpu-mini preset's stated estimate: no finished cpu-mini run")
    assert not journal.exists()  # estimating never creates the storage
    study = st.open_study("lr-wd-cpu-mini", journal)
    for wall, diverged, preset in [(60, False, "cpu-mini"), (70, False, "cpu-mini"),
                                   (80, False, "cpu-mini"), (5, True, "cpu-mini"),
                                   (500, False, "paper")]:
        study.add_trial(optuna.trial.create_trial(
            value=0.8, user_attrs={"preset": preset, "diverged": diverged, "wall_time": wall}))
    seconds, source = planning.estimate_run_seconds(journal, "cpu-mini")
    assert seconds == 70 and source.startswith("measured: median of 3 finished cpu-mini runs")


def test_runs_made_in_parallel_count_at_the_rate_they_were_made(env):
    """Two workers that each take 120 s per run make a run every 60 s."""
    journal = env / "p.journal"
    study = st.open_study("lr-wd-cpu-mini", journal)
    t0 = datetime.datetime(2026, 1, 1)
    for k in range(6):  # three rounds of two runs side by side
        start = t0 + datetime.timedelta(seconds=120 * (k // 2))
        trial = optuna.trial.create_trial(
            value=0.8, user_attrs={"preset": "cpu-mini", "diverged": False, "wall_time": 120})
        trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(
            seconds=119)
        study.add_trial(trial)
    assert planning.estimate_run_seconds(journal, "cpu-mini")[0] == 60


# ----------------------------------------------------------------------------- resumption

@pytest.fixture(scope="module")
def one_thread():
    """Tiny convs on shared cores: one thread is faster than two that wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_plan(**kw) -> planning.Plan:
    base = dict(steps=(3, 3), seeds=1, tune=(5, 3), diagnostics=("c",))
    return planning.Plan("tiny", "test", 1.0, "test", **{**base, **kw})


def test_reproduce_resumes_after_an_interrupt_and_then_runs_nothing(env, monkeypatch,
                                                                    one_thread):
    journal, out = env / "s.journal", env / "out"
    opts = reproduce.Options(FAKE, fake_cifar(256, 50), device="cpu", progress=False)
    p = small_plan()
    monkeypatch.setenv("REPRO_STOP_AT", "20")  # "Ctrl-C" in the third landscape
    with pytest.raises(KeyboardInterrupt):
        reproduce.run(p, journal, out, opts, say=lambda _: None)
    assert len(calls(env)) == 19
    monkeypatch.delenv("REPRO_STOP_AT")
    first = reproduce.run(p, journal, out, opts, say=lambda _: None)
    done = calls(env)
    assert len(done) == 3 * 9 + 5 + 3  # every point of the plan once: nothing ran twice
    assert first["ran"] == {"landscapes": 27 - 19, "tuner": 8, "diagnostics": 3}
    again = reproduce.run(p, journal, out, opts, say=lambda _: None)
    assert calls(env) == done and again["ran"] == {"landscapes": 0, "tuner": 0, "diagnostics": 0}
    diag = st.open_study(experiments.study_name("tiny"), journal, create=False)
    assert [t.state for t in diag.trials] == [TrialState.COMPLETE] * 3
    sessions = planning.stored(journal, "tiny")[planning.SESSIONS_ATTR]
    # an interrupted sweep adds no count: its one finished run is left out
    assert [sum(s["ran"].values()) for s in sessions] == [18, 8 + 8 + 3, 0]


def test_an_interrupted_experiment_unit_is_failed_and_run_again(env):
    study = st.open_study("diagnostics-x", env / "s.journal")
    cache = experiments.StudyCache(study)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get("unit-1", interrupted)
    assert study.trials[0].state == TrialState.FAIL
    assert experiments.StudyCache(study).get("unit-1", lambda: {"test_acc": 0.5}, runs=2) == {
        "test_acc": 0.5}
    read_only = experiments.StudyCache(study, read_only=True)
    assert read_only.get("unit-1", None)["test_acc"] == 0.5
    with pytest.raises(experiments.NotCached):
        read_only.get("unit-2", lambda: {})


def test_the_stored_plan_is_kept_for_the_same_budget(env):
    journal = env / "s.journal"
    p = planning.plan_for("cpu-mini", planning.parse_budget("3h"), journal)
    planning.store(journal, "cpu-mini", planning.PLAN_ATTR,
                   {**p.to_dict(), "run_seconds": 45.0})  # as if measured since
    kept = planning.plan_for("cpu-mini", planning.parse_budget("3h"), journal)
    assert kept.run_seconds == 45.0 and kept.steps == p.steps
    assert planning.plan_for("cpu-mini", planning.parse_budget("4h"), journal).budget == "4h"


# ----------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("args, needle", [
    (["--budget", "3x"], "bad --budget '3x': give a whole number of runs"),
    (["--budget", "0"], "bad --budget '0': it must be more than 0"),
    (["--budget", "12"], "is below the smallest plan, 36 runs"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_cli_errors_are_one_line(env, capsys, args, needle):
    assert main(["reproduce", "--dry-run", "--storage", str(env / "s.journal"), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_cli_runs_the_smallest_plan_and_writes_a_docs_ready_report(env, capsys):
    journal, out = str(env / "s.journal"), env / "docs" / "reproduce-tiny"
    args = ["reproduce", "--preset", "tiny", "--budget", "40", "--objective", FAKE,
            "--storage", journal, "--out", str(out), "--quiet"]
    assert main([*args, "--dry-run"]) == 0
    assert "4 λ × 3 values" in capsys.readouterr().out and not calls(env)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "runs made now: landscapes 36" in printed and len(calls(env)) == 36
    md = (out / "report.md").read_text()
    assert f"Produced by `ridgeline reproduce --preset tiny --budget 40 --out {out}" in md
    assert md.count("not run (budget)") >= 5  # tuner (2 + table), diagnostics (3 + table)
    for link in ("figures/lr-batch-tiny.png", "figures/lr-momentum-tiny.png",
                 "figures/lr-wd-tiny.png"):
        assert f"]({link})" in md and (out / link).is_file()
    assert main([*args, "--report-only"]) == 0 and len(calls(env)) == 36
