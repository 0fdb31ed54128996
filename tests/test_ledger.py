"""The run ledger: storage opening and its errors, the one encoding of results, liveness, and
repair of a torn journal; all on Optuna's public API."""

import dataclasses
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ridgeline.cli import main
from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.runs import ledger as st


def _result(diverged=False, **kw):
    from ridgeline.cifar.train import RunResult

    hp = HParams(lr=0.1, batch_size=64)
    d = dict(test_acc=None if diverged else 0.91, train_loss=None if diverged else 0.3,
             diverged=diverged, epochs=[{"epoch": 1, "train_loss": 0.3, "lr": 0.0}],
             wall_time=2.0, train_time=1.5, images_per_sec=100.0, hparams=hp.to_dict(),
             preset="tiny", seed=3, device="cpu", precision="fp32", versions={"torch": "x"},
             extras={"diag": {"a": [1, 2]}})
    d.update(kw)
    return RunResult(**d)


def _claimed_trial(study, hp=None, seed=3):
    """A queued point taken as a worker takes it (ask pops the oldest WAITING trial)."""
    hp = hp or HParams(lr=0.1, batch_size=64)
    st.enqueue(study, st.point_params(hp, seed), st.point_attrs(hp, "tiny", seed))
    trial = study.ask()
    st.sign(trial)
    return trial


def test_result_fields_match_runresult():
    from ridgeline.cifar.train import RunResult

    assert tuple(f.name for f in dataclasses.fields(RunResult)) == st.RESULT_FIELDS


def test_result_round_trips_through_trial_attrs(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    trial = _claimed_trial(study)
    result = _result()
    assert st.complete_result(study, trial, result)
    # a fresh process view of the file sees the same thing
    t = st.open_study("s", tmp_path / "j.journal", create=False).trials[0]
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.91)
    assert st.trial_to_result(t) == result
    assert t.user_attrs["lr/batch_size"] == pytest.approx(0.1 / 64)
    assert t.user_attrs["lr*weight_decay/(1-momentum)"] == pytest.approx(0.1 * 5e-4 / 0.1)


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_diverged_is_complete_with_the_flag_and_reads_as_minus_inf(tmp_path, value):
    study = st.open_study("s", tmp_path / "j.journal")
    trial = _claimed_trial(study)
    assert st.complete(study, trial, value)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.value == st.DIVERGED_VALUE
    assert t.user_attrs["diverged"] is True and st.is_diverged(t)
    assert st.outcome(t) == -math.inf


def test_a_negative_real_value_is_not_diverged(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    trial = _claimed_trial(study)
    st.complete(study, trial, -3.0)
    assert not st.is_diverged(study.trials[0]) and st.outcome(study.trials[0]) == -3.0


def test_diverged_run_result(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    st.complete_result(study, _claimed_trial(study), _result(diverged=True))
    t = study.trials[0]
    assert st.is_diverged(t) and st.trial_to_result(t).test_acc is None


def test_completing_a_trial_failed_under_us_reports_it_lost(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    trial = _claimed_trial(study)
    study.tell(trial.number, state=TrialState.FAIL)  # another process found it stale
    assert not st.complete(study, trial, 0.5)
    assert study.trials[0].state == TrialState.FAIL


def test_default_storage_is_a_journal_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(st.STORAGE_ENV, raising=False)
    assert isinstance(st.open_storage(), optuna.storages.JournalStorage)
    assert (tmp_path / "ridgeline.journal").exists()
    monkeypatch.setenv(st.STORAGE_ENV, str(tmp_path / "sub" / "other.journal"))
    st.open_study("x")
    assert (tmp_path / "sub" / "other.journal").exists()


def test_sqlite_url_is_accepted(tmp_path):
    study = st.open_study("s", f"sqlite:///{tmp_path / 'r.db'}")
    assert st.study_names(f"sqlite:///{tmp_path / 'r.db'}") == [study.study_name]


@pytest.mark.parametrize("make", [
    lambda p: "nosuchdb://host/x",
    lambda p: f"sqlite:///{p}/missing/dir/x.db",
    lambda p: "postgresql://user:hunter2@127.0.0.1:1/db",
    lambda p: str(p),  # a folder
    lambda p: _sqlite_file(p),  # an SQLite file given as a path
    lambda p: _garbage_file(p),
])
def test_bad_storage_is_one_line_naming_it(tmp_path, make):
    ref = make(tmp_path)
    with pytest.raises(RidgelineError) as e:
        st.open_storage(ref)
    msg = str(e.value)
    assert "\n" not in msg and "storage" in msg
    assert "hunter2" not in msg
    assert st.storage_label(ref).split("/")[-1] in msg


def _sqlite_file(p):
    sqlite3.connect(p / "x.db").execute("create table t (a)").connection.commit()
    return str(p / "x.db")


def _garbage_file(p):
    (p / "g.journal").write_text("this is not json\n")
    return str(p / "g.journal")


def test_cli_bad_storage_prints_one_line(tmp_path, capsys):
    assert main(["plot", "--storage", "nosuchdb://x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuchdb://x" in err


def test_missing_study_names_the_existing_ones(tmp_path):
    st.open_study("there", tmp_path / "j.journal")
    with pytest.raises(RidgelineError, match="there"):
        st.open_study("absent", tmp_path / "j.journal", create=False)


def test_liveness(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    mine = _claimed_trial(study)
    assert not st.is_stale(study.trials[mine.number])  # owned by this live process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    gone = dict(st.owner(study.trials[mine.number]), pid=int(dead), start="0")
    other = dict(gone, host=socket.gethostname() + "-elsewhere", pid=1, start=None)
    for rec, beat, stale in [(gone, None, True), (other, time.time(), False),
                             (other, time.time() - 1000, True)]:
        mine.set_user_attr(st.OWNER_ATTR, rec)
        if beat:
            mine.set_user_attr(st.HEARTBEAT_ATTR, beat)
        assert st.is_stale(study.trials[mine.number], stale_after=600) is stale
    assert st.fail_stale(study) == [mine.number]
    t = study.trials[mine.number]
    assert t.state == TrialState.FAIL and st.interrupted(t)
    assert st.fail_stale(study) == []  # failed once only


def test_an_owner_record_copied_from_another_trial_does_not_count(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    first = _claimed_trial(study)
    rec = st.owner(study.trials[first.number])
    study.enqueue_trial({"seed": 1}, user_attrs={st.OWNER_ATTR: rec})  # e.g. a retried copy
    copy = study.ask()
    assert st.owner(study.trials[copy.number]) is None


def test_heartbeat_beats_while_running(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    trial = study.ask()
    with st.alive(trial, interval=0.05):
        time.sleep(0.3)
    attrs = study.trials[0].user_attrs
    assert st.HEARTBEAT_ATTR in attrs and attrs[st.OWNER_ATTR]["pid"] == os.getpid()


def _journal_with_trials(path, n=4):
    study = st.open_study("s", path)
    for i in range(n):
        trial = study.ask()
        st.complete(study, trial, i / 10, {"i": i})
    return path.read_bytes()


@pytest.mark.parametrize("cut", [2, 7, 25, 60])
def test_a_torn_last_line_is_set_aside_and_every_complete_record_kept(tmp_path, cut, capsys):
    path = tmp_path / "t.journal"
    data = _journal_with_trials(path)
    lines = data.splitlines(keepends=True)
    cut = min(cut, len(lines[-1]) - 1)  # tear inside the last record
    path.write_bytes(data[: len(data) - cut])
    study = st.open_study("s", path)  # a writing open repairs it
    assert "torn line" in capsys.readouterr().err
    assert (tmp_path / "t.journal.corrupt").exists()
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 3
    st.complete(study, study.ask(), 0.9)  # the next write starts on a line of its own
    again = st.open_study("s", path, create=False)
    assert [t.value for t in again.trials][-1] == 0.9
    assert all(json.loads(line) for line in path.read_bytes().splitlines())


def test_a_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "t.journal"
    data = _journal_with_trials(path)
    path.write_bytes(data[:-1])
    study = st.open_study("s", path)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 4
    assert not (tmp_path / "t.journal.corrupt").exists()


def test_a_read_only_journal_is_one_line(tmp_path):
    path = tmp_path / "ro.journal"
    _journal_with_trials(path, 1)
    if os.geteuid() == 0:  # root writes anywhere: a journal "inside" a file stands in
        bad = tmp_path / "file.txt"
        bad.write_text("x")
        ref = bad / "ro.journal"
    else:
        path.chmod(0o444)
        tmp_path.chmod(0o555)
        ref = path
    try:
        with pytest.raises(RidgelineError) as e:
            st.open_study("s", ref)
    finally:
        tmp_path.chmod(0o755)
    assert "\n" not in str(e.value) and str(ref) in str(e.value)


def test_a_read_only_journal_still_reads(tmp_path, monkeypatch):
    path = tmp_path / "ro.journal"
    _journal_with_trials(path, 2)
    monkeypatch.setattr(st.os, "access", lambda p, mode: False)  # as if nothing were writable
    study = st.open_study("s", path, read_only=True)
    assert len(study.trials) == 2


def test_reading_a_missing_journal_creates_nothing(tmp_path):
    path = tmp_path / "new.journal"
    assert st.study_names(path) == []
    with pytest.raises(RidgelineError, match="does not exist"):
        st.open_study("s", path, read_only=True)
    assert main(["plot", "--storage", str(path), "--out", str(tmp_path / "o")]) == 2
    assert not path.exists()


def test_unknown_storage_scheme_lists_the_allowed_forms(tmp_path):
    with pytest.raises(RidgelineError) as e:
        st.open_storage("bogus://x")
    msg = str(e.value)
    assert "bogus" in msg and ".journal" in msg and "postgresql://" in msg and "\n" not in msg


def test_rdb_storages_get_optunas_heartbeat(tmp_path):
    storage = st.open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    assert storage.get_heartbeat_interval() == st.RDB_HEARTBEAT_S


def test_src_uses_no_private_optuna_api():
    import pathlib
    import re

    src = pathlib.Path(st.__file__).parents[1]
    private = re.compile(r"\._storage\b|\._trial_id\b|\._backend\b|\._study_id\b")
    hits = [f"{p}:{i}" for p in src.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert hits == []


def test_experiments_cache_records_a_diverged_unit_in_the_one_encoding(tmp_path):
    from ridgeline.science.experiments import StudyCache

    study = st.open_study("diag", tmp_path / "j.journal")
    StudyCache(study).get("u", lambda: {"test_acc": None})
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE and st.is_diverged(t)
    assert StudyCache(study).get("u", lambda: pytest.fail("re-run")) == {"test_acc": None}


def test_migration_rewrites_the_tuners_old_minus_inf(tmp_path):
    import importlib.util

    path = tmp_path / "old.journal"
    study = st.open_study("t", path)
    trial = study.ask()
    trial.set_user_attr("diverged", True)
    trial.set_user_attr("pending_value", -math.inf)
    study.tell(trial, -math.inf)  # what the tuner wrote before the ledger
    script = Path(st.__file__).parents[3] / "scripts" / "migrate_diverged.py"
    spec = importlib.util.spec_from_file_location("migrate", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, changed = mod.migrate(path.read_bytes().splitlines())
    path.write_bytes(b"\n".join(out) + b"\n")
    (t,) = st.open_study("t", path, create=False).trials
    assert changed == 2 and t.value == st.DIVERGED_VALUE and st.is_diverged(t)
    assert t.user_attrs["pending_value"] is None


def test_a_resumed_study_at_another_thread_count_is_warned_about(tmp_path, capsys):
    study = st.open_study("s", tmp_path / "j.journal")
    st.complete_result(study, _claimed_trial(study), _result(threads=2))
    assert st.warn_thread_mismatch(study, 2) is None
    assert "1" in st.warn_thread_mismatch(study, 1) and "2" in capsys.readouterr().err
    assert st.trial_to_result(study.trials[0]).threads == 2


def test_planned_threads_follow_the_objective_and_executor():
    from ridgeline.runs.executors import InProcess
    from ridgeline.runs.objectives import TrainObjective, planned_threads

    assert planned_threads(TrainObjective(threads=3), InProcess()) == 3
    assert planned_threads(lambda hp, preset, seed: 0.5, InProcess()) is None
    assert planned_threads(None, InProcess()) >= 1
