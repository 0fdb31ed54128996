"""The study layer: storage opening and its errors, RunResult ↔ trial attrs, trial liveness."""

import dataclasses
import socket
import sqlite3
import subprocess
import sys
import time

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
    hp = hp or HParams(lr=0.1, batch_size=64)
    study.enqueue_trial(st.point_params(hp, seed), user_attrs=st.point_attrs(hp, "tiny", seed))
    frozen = study.get_trials(states=(TrialState.WAITING,))[-1]
    assert st.claim(study, frozen)
    return frozen


def test_result_fields_match_runresult():
    from ridgeline.cifar.train import RunResult

    assert tuple(f.name for f in dataclasses.fields(RunResult)) == st.RESULT_FIELDS


def test_result_round_trips_through_trial_attrs(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    frozen = _claimed_trial(study)
    result = _result()
    assert st.record_result(study, frozen._trial_id, result)
    # a fresh process view of the file sees the same thing
    t = st.open_study("s", tmp_path / "j.journal", create=False).trials[0]
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.91)
    assert st.trial_to_result(t) == result
    assert t.user_attrs["lr/batch_size"] == pytest.approx(0.1 / 64)
    assert t.user_attrs["lr*weight_decay/(1-momentum)"] == pytest.approx(0.1 * 5e-4 / 0.1)


def test_diverged_is_complete_with_zero_value(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    frozen = _claimed_trial(study)
    st.record_result(study, frozen._trial_id, _result(diverged=True))
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.value == st.DIVERGED_VALUE
    assert t.user_attrs["diverged"] is True
    assert st.trial_to_result(t).test_acc is None


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
    frozen = study.trials[mine.number]
    assert not st.is_stale(frozen)  # owned by this live process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    gone = dict(frozen.system_attrs[st.OWNER_ATTR], pid=int(dead), start="0")
    other = dict(host=socket.gethostname() + "-elsewhere", pid=1, start=None)
    for owner, beat, stale in [(gone, None, True), (other, time.time(), False),
                               (other, time.time() - 1000, True)]:
        study._storage.set_trial_system_attr(mine._trial_id, st.OWNER_ATTR, owner)
        if beat:
            study._storage.set_trial_system_attr(mine._trial_id, st.HEARTBEAT_ATTR, beat)
        assert st.is_stale(study.trials[mine.number], stale_after=600) is stale
    assert st.fail_stale_trials(study) == [mine.number]
    t = study.trials[mine.number]
    assert t.state == TrialState.FAIL and t.user_attrs[st.FAILURE_ATTR].startswith("interrupted")
    assert st.fail_stale_trials(study) == []  # failed once only


def test_heartbeat_beats_while_running(tmp_path):
    study = st.open_study("s", tmp_path / "j.journal")
    frozen = _claimed_trial(study)
    with st.heartbeat(study, frozen._trial_id, interval=0.05):
        time.sleep(0.3)
    assert st.HEARTBEAT_ATTR in study.trials[0].system_attrs
