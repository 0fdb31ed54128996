"""Grids, resumable sweeps, kill/resume and multi-worker runs, on a cheap fake objective."""

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ridgeline.cli import main
from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.landscape import sweep
from ridgeline.landscape.grid import GridSpec, make_grid
from ridgeline.runs import ledger as st
from ridgeline.runs.objectives import TrainObjective

REPO = Path(__file__).resolve().parents[1]
FAKE = "tests.test_sweep:fake_objective"


def fake_objective(hp: HParams, preset: str, seed: int):
    """A λα ridge: best at log2 λ = log2(1/α) − 13.3 (the tiny preset's centre); λ ≥
    $FAKE_DIVERGE_LR diverges. Logs each call (key, pid) to $FAKE_LOG; sleeps $FAKE_SLEEP;
    raises once per point while $FAKE_FAIL_DIR has no marker for it."""
    key = st.point_key(hp, preset, seed)
    if os.environ.get("FAKE_LOG"):
        with open(os.environ["FAKE_LOG"], "a") as f:
            f.write(f"{key}\t{os.getpid()}\n")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.environ.get("FAKE_FAIL_DIR"):
        marker = Path(os.environ["FAKE_FAIL_DIR"], hashlib.md5(key.encode()).hexdigest())
        if not marker.exists():
            marker.write_text("")
            raise ValueError("flaky")
    if hp.lr >= float(os.environ.get("FAKE_DIVERGE_LR", "inf")):
        return None
    off = math.log2(hp.lr) - math.log2(1 / hp.weight_decay) + 13.3
    return 0.9 - 0.01 * off**2 + 0.001 * seed


def bad_objective(hp, preset, seed):
    raise RidgelineError("CIFAR-10 data folder /nowhere does not exist")


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(path))
    monkeypatch.setenv("FAKE_SLEEP", "0")
    for var in ("FAKE_FAIL_DIR", "FAKE_DIVERGE_LR"):
        monkeypatch.delenv(var, raising=False)

    def calls() -> Counter:
        text = path.read_text() if path.exists() else ""
        return Counter(line.split("\t")[0] for line in text.splitlines())

    calls.pids = lambda: {line.split("\t")[1] for line in path.read_text().splitlines()}
    return calls


def _complete_by_key(study) -> Counter:
    return Counter(t.user_attrs[st.KEY_ATTR]
                   for t in study.get_trials(states=(TrialState.COMPLETE,)))


def _assert_each_point_once(study, spec):
    keys = {p.key for p in spec.points()}
    done = _complete_by_key(study)
    assert set(done) == keys and set(done.values()) == {1}


# ----------------------------------------------------------------------------- grid

def test_grid_is_log2_about_the_preset_centre():
    spec = make_grid("lr-wd", "tiny", steps=(5, 3))
    assert spec.values[0] == (0.05, 0.1, 0.2, 0.4, 0.8)
    assert spec.values[1] == (0.00025, 0.0005, 0.001)
    assert spec.default_study_name() == "lr-wd-tiny"


def test_momentum_is_gridded_in_one_minus_rho_and_batch_rounded():
    m = make_grid("lr-momentum", "tiny", steps=(1, 3), span=(0, 1)).values[1]
    assert [1 - v for v in m] == pytest.approx([0.05, 0.1, 0.2])
    b = make_grid("batch-lr", "cpu-mini", steps=(4, 1), span=(1, 0)).values[0]
    assert b == (32, 51, 81, 128) and all(isinstance(v, int) for v in b)


def test_points_are_seed_major_with_stable_keys():
    spec = make_grid("lr-batch", "tiny", steps=2, seeds=2)
    pts = spec.points()
    assert [p.seed for p in pts] == [0] * 4 + [1] * 4
    assert len({p.key for p in pts}) == 8
    assert GridSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("kw, match", [
    (dict(axes="lr-lr"), "slice"),
    (dict(axes="lr-epochs"), "slice"),
    (dict(axes="lr-wd", steps=0), "steps"),
    (dict(axes="lr-wd", steps=(3, 3, 3)), "steps"),
    (dict(axes="lr-wd", span=-1.0), "span"),
    (dict(axes="lr-wd", seeds=0), "seeds"),
    (dict(axes="lr-momentum", span=5.0), "momentum"),
    (dict(axes="lr-batch", steps=9, span=0.1), "collide"),
    (dict(axes="lr-batch", steps=9), "training images"),
])
def test_bad_grid_arguments_are_one_line(kw, match):
    with pytest.raises(RidgelineError, match=match) as e:
        make_grid(preset="tiny", **kw)
    assert "\n" not in str(e.value)


def test_cli_bad_grid_is_one_line(capsys):
    assert main(["sweep", "--slice", "lr-wd", "--preset", "tiny", "--span", "-2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "span" in err


# ----------------------------------------------------------------------------- sweeps

def test_sweep_runs_every_point_once_and_resume_skips_them(tmp_path, log):
    spec = make_grid("lr-wd", "tiny", steps=(3, 2), seeds=2)
    rep = sweep.run_sweep(spec, tmp_path / "j.journal", objective=FAKE, progress=False)
    assert rep.complete == rep.total == 12 and rep.ran["done"] == 12
    study = st.open_study("lr-wd-tiny", tmp_path / "j.journal", create=False)
    _assert_each_point_once(study, spec)
    t = study.trials[0]
    assert set(t.params) == {"lr", "momentum", "weight_decay", "batch_size", "seed"}
    assert t.user_attrs["lr*weight_decay"] == pytest.approx(t.params["lr"] * 5e-4, rel=1e-6) \
        or t.params["weight_decay"] != 5e-4
    again = sweep.run_sweep(spec, tmp_path / "j.journal", objective=FAKE, progress=False)
    assert sum(again.ran.values()) == 0 and set(log().values()) == {1}


def test_diverged_point_is_recorded_and_not_rerun(tmp_path, log, monkeypatch):
    monkeypatch.setenv("FAKE_DIVERGE_LR", "0.7")
    spec = make_grid("lr-wd", "tiny", steps=(5, 2))  # λ = 0.8 diverges
    rep = sweep.run_sweep(spec, tmp_path / "j.journal", objective=FAKE, progress=False)
    assert rep.diverged == 2 and rep.complete == 10
    study = st.open_study("lr-wd-tiny", tmp_path / "j.journal", create=False)
    div = [t for t in study.trials if t.user_attrs["diverged"]]
    assert len(div) == 2 and all(t.state == TrialState.COMPLETE and t.value == 0.0 for t in div)
    sweep.run_sweep(spec, tmp_path / "j.journal", objective=FAKE, progress=False)
    assert set(log().values()) == {1}


def test_failed_points_are_recorded_then_retried(tmp_path, log, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_DIR", str(tmp_path))
    spec = make_grid("lr-wd", "tiny", steps=(2, 2))
    rep = sweep.run_sweep(spec, tmp_path / "j.journal", objective=FAKE, progress=False)
    assert rep.ran["failed"] == 4 and rep.complete == 0
    study = st.open_study("lr-wd-tiny", tmp_path / "j.journal", create=False)
    assert all(t.user_attrs[st.FAILURE_ATTR] == "error: ValueError: flaky" for t in study.trials)
    rep = sweep.run_sweep(spec, tmp_path / "j.journal", objective=FAKE, progress=False)
    assert rep.complete == 4
    _assert_each_point_once(study, spec)


def test_user_error_in_objective_stops_the_sweep_in_one_line(tmp_path, capsys):
    argv = ["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "2", "--quiet",
            "--objective", "tests.test_sweep:bad_objective", "--storage",
            str(tmp_path / "j.journal")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nowhere" in err
    study = st.open_study("lr-wd-tiny", tmp_path / "j.journal", create=False)
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 1  # the rest still wait


def test_killed_sweep_resumes_without_lost_or_duplicated_points(tmp_path, log, monkeypatch):
    # 1 s a point: the whole grid takes >= 12 s, so a poll of the journal that is slow on a
    # busy host (it failed once under load at 0.2 s) still kills the sweep part-way
    monkeypatch.setenv("FAKE_SLEEP", "1.0")
    journal = tmp_path / "j.journal"
    argv = ["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "4", "3", "--quiet",
            "--objective", FAKE, "--storage", str(journal)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "ridgeline.cli", *argv], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120  # start-up (imports) can take long under load
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and sum(_complete_by_key(_study(journal)).values()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _study(journal)
    done_before = set(_complete_by_key(before))
    assert 3 <= len(done_before) < 12, proc.stderr.read()
    running = [t.number for t in before.get_trials(states=(TrialState.RUNNING,))]
    assert len(running) <= 1

    out = subprocess.run([sys.executable, "-m", "ridgeline.cli", *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    after = _study(journal)
    spec = make_grid("lr-wd", "tiny", steps=(4, 3))
    _assert_each_point_once(after, spec)
    assert not after.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for n in running:  # the run in flight is failed as interrupted, and run again
        assert after.trials[n].state == TrialState.FAIL
        assert st.interrupted(after.trials[n])
    calls = log()
    assert all(calls[k] == 1 for k in done_before)  # finished points never ran twice


def _study(journal):
    return st.open_study("lr-wd-tiny", journal, create=False)


def test_two_workers_share_a_study_without_duplicates(tmp_path, log, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0.3")  # long enough that both workers get points
    spec = make_grid("lr-wd", "tiny", steps=(4, 3))
    rep = sweep.run_sweep(spec, tmp_path / "j.journal", objective=FAKE, workers=2,
                          progress=False)
    assert rep.complete == 12 and rep.ran["done"] == 12
    _assert_each_point_once(_study(tmp_path / "j.journal"), spec)
    assert set(log().values()) == {1} and len(log().keys()) == 12
    assert len(log.pids()) == 2 and str(os.getpid()) not in log.pids()


def test_unpicklable_objective_with_workers_is_an_error(tmp_path):
    spec = make_grid("lr-wd", "tiny", steps=2)
    with pytest.raises(RidgelineError, match="module-level"):
        sweep.run_sweep(spec, tmp_path / "j.journal", objective=lambda hp, p, s: 0.5,
                        workers=2, progress=False)


def test_bad_objective_reference_is_one_line(tmp_path):
    spec = make_grid("lr-wd", "tiny", steps=2)
    with pytest.raises(RidgelineError, match="module:function"):
        sweep.run_sweep(spec, tmp_path / "j.journal", objective="nope.nothing:here",
                        progress=False)


def test_default_objective_trains_the_tiny_preset(tmp_path):
    from tests.synthetic import fake_cifar

    base = HParams(lr=0.2, batch_size=64, epochs=1, warmup_epochs=0.5)
    spec = make_grid("lr-wd", "tiny", base=base, steps=(2, 1))
    objective = TrainObjective(device="cpu", precision="fp32", data=fake_cifar())
    rep = sweep.run_sweep(spec, tmp_path / "j.journal", objective=objective, progress=False)
    assert rep.complete == 2
    t = _study(tmp_path / "j.journal").trials[0]
    result = st.trial_to_result(t)
    assert result.preset == "tiny" and result.hparams["epochs"] == 1
    assert len(result.epochs) == 1 and t.value == pytest.approx(result.test_acc)
