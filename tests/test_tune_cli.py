"""`ridgeline tune` end to end on a cheap fake objective: outputs, resume, workers, errors."""

import csv
import math

import optuna
import pytest
from optuna.trial import TrialState

from ridgeline.cli import main
from ridgeline.runs import ledger as st
from ridgeline.tuner import report as tuner_report
from ridgeline.tuner import tune
from tests.synthetic import call_log, log_call

FAKE = "tests.test_tune_cli:fake_objective"


def fake_objective(hp, preset, seed):
    """Steep in u = λα/(1−ρ) (best at 4e-4), shallow in 1−ρ and α. Appends each finished call
    to $TUNE_LOG; raises KeyboardInterrupt instead of running call number $TUNE_STOP_AT."""
    log = call_log("TUNE")
    x_u = math.log2(hp.lr * hp.weight_decay / (1 - hp.momentum) / 4e-4)
    x_r, x_a = math.log2((1 - hp.momentum) / 0.1), math.log2(hp.weight_decay / 5e-4)
    acc = 0.9 - 0.01 * x_u**2 - 0.002 * x_r**2 - 0.002 * x_a**2 + 0.0005 * seed
    log_call(log, hp.lr, hp.momentum, hp.weight_decay, seed)
    return acc


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_LOG", str(tmp_path / "calls.log"))
    monkeypatch.delenv("TUNE_STOP_AT", raising=False)
    for var in ("FAKE_LOG", "FAKE_FAIL_DIR", "FAKE_DIVERGE_LR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run_tune(tmp_path, *extra):
    return main(["tune", "--preset", "tiny", "--start", "bad", "--objective", FAKE,
                 "--storage", str(tmp_path / "t.journal"), "--out", str(tmp_path / "out"),
                 "--max-evals", "12", "--quiet", *extra])


def calls(tmp_path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def test_tune_writes_table_and_figure_over_a_landscape(env, capsys):
    journal = str(env / "t.journal")
    assert main(["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "3", "3",
                 "--objective", "tests.test_sweep:fake_objective", "--storage", journal,
                 "--quiet"]) == 0
    assert set(tuner_report.find_landscapes(journal, "tiny")) == {"weight_decay"}
    assert tuner_report.find_landscapes(journal, "cpu-mini") == {}
    capsys.readouterr()
    assert run_tune(env) == 0
    printed = capsys.readouterr().out
    assert "tune-tiny-bad: tuning lr*weight_decay/(1-momentum), 1-momentum" in printed
    assert "stopped at --max-evals after 12 runs" in printed and "λα/(1−ρ)" in printed
    out = env / "out"
    with open(out / "tune-tiny-bad.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(calls(env)) and rows[0]["step"] == "start"
    assert float(rows[0]["lr"]) == 0.001 and rows[0]["accepted"] == "True"
    md = (out / "tune-tiny-bad.md").read_text()
    assert "| run | step | λ | ρ | α | λα/(1−ρ) | test accuracy |" in md
    assert md.count("\n| ") == len(rows) + 1
    assert (out / "tune-tiny-bad.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    study = st.open_study("tune-tiny-bad", env / "t.journal", create=False)
    results = [st.trial_to_result(t) for t in study.trials]
    assert all(r is not None and r.preset == "tiny" for r in results)
    assert {r.hparams["batch_size"] for r in results} == {32}  # the preset's, held fixed


def test_interrupted_tune_resumes_without_repeating_a_run(env, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_STOP_AT", "6")
    assert run_tune(env) == 130  # "Ctrl-C" during the 6th run
    assert len(calls(env)) == 5
    monkeypatch.delenv("TUNE_STOP_AT")
    capsys.readouterr()
    assert run_tune(env) == 0
    assert "(5 replayed from the study" in capsys.readouterr().out
    done = calls(env)
    assert len(done) == 12 and len(set(done)) == 12  # every run once, none repeated
    study = st.open_study("tune-tiny-bad", env / "t.journal", create=False)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 12
    assert states.count(TrialState.FAIL) == 1  # the interrupted run


def test_worker_processes_give_the_sequential_result(env):
    kwargs = dict(objective=FAKE, max_evals=8, line_search="double")
    one = tune.tune_preset("tiny", "bad", env / "t.journal", "one", **kwargs)
    two = tune.tune_preset("tiny", "bad", env / "t.journal", "two", workers=2, **kwargs)
    assert two.history == one.history and two.n_speculative > 0


@pytest.mark.parametrize("args, needle", [
    (["--coords", "raw", "--invariant", "lr/(1-momentum)"], "exclude each other"),
    (["--invariant", "lr/batch_size"], "unknown name 'batch_size'"),
    (["--invariant", "lr", "--invariant", "lr**2"], "not linearly independent"),
    (["--objective", "nowhere:nothing"], "cannot load objective"),
    (["--momentum", "1.5"], "momentum=1.5"),
])
def test_bad_tune_input_is_one_line(env, capsys, args, needle):
    assert run_tune(env, *args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_a_failing_run_stops_the_tune_in_one_line(env, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_LOG", str(env))  # a folder: the objective's open() fails
    assert run_tune(env) == 2
    err = capsys.readouterr().err.strip()
    assert "seed 0 failed (IsADirectoryError" in err and err.endswith("re-run to resume")


def test_tune_preset_trains_and_records_the_run_result():
    from ridgeline.runs.objectives import TrainObjective
    from tests.synthetic import fake_cifar

    study = optuna.create_study(direction="maximize")
    start = tune.get_preset("tiny").hparams.replace(epochs=1, warmup_epochs=0.25)
    result = tune.tune_preset("tiny", start, study._storage, study.study_name, max_evals=1,
                              objective=TrainObjective(device="cpu", data=fake_cifar(256, 20)))
    assert result.n_runs == 1 and result.history[0].params["lr"] == 0.2
    run = st.trial_to_result(study.trials[0])
    assert run.preset == "tiny" and run.hparams["lr"] == 0.2 and 0 <= run.test_acc <= 1
    assert study.trials[0].value == run.test_acc


def test_start_points_and_names():
    hp = tune.get_preset("cpu-mini").hparams
    bad = tune.start_point(hp, "bad", lr=0.002)
    assert (bad.lr, bad.momentum, bad.weight_decay, bad.batch_size) == (0.002, 0.5, 0.01, 64)
    assert tune.start_point(hp) == hp
    assert tune.default_study_name("cpu-mini", "bad") == "tune-cpu-mini-bad"
    with pytest.raises(tune.TuneError, match="unknown start"):
        tune.start_point(hp, "good")
