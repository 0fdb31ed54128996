"""Executors: choosing one, local worker processes and Ray tasks sharing a study, workers and
drivers killed mid-sweep. Objectives are fakes that sleep; nothing trains.

The Ray tests run a local 2-CPU cluster on loopback (started once for the module, stopped at
its end) and drive `ridgeline sweep` in subprocesses, each under a hard timeout.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ridgeline.cli import main
from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.landscape import sweep
from ridgeline.landscape.grid import make_grid
from ridgeline.runs import executors
from ridgeline.runs import ledger as st

REPO = Path(__file__).resolve().parents[1]
SLOW = "tests.test_executors:slow_objective"
# Ray on loopback only, without token auth (a throwaway cluster nobody else can reach).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
HEAD = """
import logging, sys, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes our stdin
ray.shutdown()
"""


def slow_objective(hp: HParams, preset: str, seed: int):
    """Logs "key, pid, OMP_NUM_THREADS" to $RIDGELINE_TEST_LOG, then sleeps
    $RIDGELINE_TEST_SLEEP s (RIDGELINE_* variables reach Ray tasks too)."""
    key = st.point_key(hp, preset, seed)
    with open(os.environ["RIDGELINE_TEST_LOG"], "a") as f:
        f.write(f"{key}\t{os.getpid()}\t{os.environ.get('OMP_NUM_THREADS')}\n")
    time.sleep(float(os.environ.get("RIDGELINE_TEST_SLEEP", "0")))
    return 0.5 + 0.01 * seed + 0.001 * hp.lr


def _calls(log: Path) -> list[tuple[str, int, str]]:
    if not log.exists():
        return []
    return [(k, int(p), t) for k, p, t in (ln.split("\t") for ln in log.read_text().splitlines())]


def _study(storage, name="lr-wd-tiny"):
    return st.open_study(name, storage, create=False)


def _assert_each_point_complete_once(study, spec):
    done = Counter(t.user_attrs[st.KEY_ATTR]
                   for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert set(done) == {p.key for p in spec.points()} and set(done.values()) == {1}
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.fixture
def test_log(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("RIDGELINE_TEST_LOG", str(log))
    monkeypatch.setenv("RIDGELINE_TEST_SLEEP", "0.4")
    return log


def _kill_first_caller(log: Path, killed: list, deadline_s: float = 60) -> threading.Thread:
    """In the background: SIGKILL the worker that made the first call, while it sleeps."""
    def run():
        end = time.time() + deadline_s
        while time.time() < end and not killed:
            calls = _calls(log)
            if calls:
                killed.append(calls[0])
                os.kill(calls[0][1], signal.SIGKILL)
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ----------------------------------------------------------------------------- choosing

@pytest.mark.parametrize("kw, kind", [
    ({}, executors.InProcess), (dict(workers=1), executors.InProcess),
    (dict(workers=2), executors.LocalProcesses),
    (dict(name="processes"), executors.LocalProcesses),
])
def test_default_executor_follows_the_worker_count(kw, kind):
    assert type(executors.make_executor(**kw)) is kind


@pytest.mark.parametrize("kw, match", [
    (dict(name="slurm"), "unknown executor"),
    (dict(name="inprocess", workers=2), "one worker"),
    (dict(name="processes", ray_address="127.0.0.1:1"), "needs --executor ray"),
    (dict(workers=0), "workers"),
])
def test_bad_executor_choices_are_one_line(kw, match):
    with pytest.raises(RidgelineError, match=match) as e:
        executors.make_executor(**kw)
    assert "\n" not in str(e.value)


def test_processes_slice_the_cores_when_there_is_no_gpu():
    ex = executors.LocalProcesses(2)
    if ex.gpus:
        assert ex.env_for(3) == {"CUDA_VISIBLE_DEVICES": str(3 % ex.gpus)}
    else:
        threads = str(max(1, (os.cpu_count() or 1) // 2))
        assert ex.env_for(0)["OMP_NUM_THREADS"] == threads


def test_missing_ray_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    argv = ["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "2", "--quiet",
            "--executor", "ray", "--objective", SLOW, "--storage", str(tmp_path / "j.journal")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ridgeline[ray]" in err


def test_unreachable_ray_address_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("ray")
    argv = ["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "2", "--quiet",
            "--ray-address", f"127.0.0.1:{_free_port()}", "--objective", SLOW,
            "--storage", str(tmp_path / "j.journal")]
    t0 = time.time()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the Ray cluster" in err
    assert time.time() - t0 < 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- processes

def test_killed_worker_process_is_replaced_and_its_point_rerun(tmp_path, test_log):
    """SIGKILL one of two local workers mid-run: its trial is failed as interrupted at once
    (its pid is gone), the point is queued again and run by another worker, in the same sweep."""
    spec = make_grid("lr-wd", "tiny", steps=(3, 2))
    killed: list = []
    killer = _kill_first_caller(test_log, killed)
    rep = sweep.run_sweep(spec, tmp_path / "j.journal", objective=SLOW, executor="processes",
                          workers=2, progress=False)
    killer.join()
    assert killed and rep.complete == rep.total == 6 and rep.workers_lost == 1
    study = _study(tmp_path / "j.journal")
    _assert_each_point_complete_once(study, spec)
    calls = Counter(k for k, _, _ in _calls(test_log))
    assert calls[killed[0][0]] == 2 and set(calls.values()) <= {1, 2} and len(calls) == 6
    interrupted = [t for t in study.get_trials(states=(TrialState.FAIL,))]
    assert [t.user_attrs[st.KEY_ATTR] for t in interrupted] == [killed[0][0]]
    assert interrupted[0].user_attrs[st.OWNER_ATTR]["worker"].startswith("processes-")
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert {t for _, _, t in _calls(test_log)} == {threads}  # cores // workers each


def deadly_objective(hp: HParams, preset: str, seed: int):
    """Kills its own worker process on the points above the grid's centre λ."""
    if hp.lr > 0.2:
        os.kill(os.getpid(), signal.SIGKILL)
    return slow_objective(hp, preset, seed)


def test_a_point_that_kills_every_worker_is_retried_a_bounded_number_of_times(
        tmp_path, test_log, capsys):
    """Replacements are capped (2 per worker), so the sweep ends; the CLI says to re-run."""
    argv = ["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "2", "1", "--quiet",
            "--workers", "2", "--objective", "tests.test_executors:deadly_objective",
            "--storage", str(tmp_path / "j.journal")]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ridgeline: error: ") and "workers died" in last
    died = int(last.split()[2])  # at most both first workers and 2 replacements per worker
    assert 4 <= died <= 6
    study = _study(tmp_path / "j.journal")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    assert len(study.get_trials(states=(TrialState.FAIL,))) == died


def test_processes_give_the_tuner_a_futures_executor():
    from concurrent.futures import ProcessPoolExecutor

    pool = executors.LocalProcesses(2).futures()
    try:
        assert isinstance(pool, ProcessPoolExecutor)
        threads = str(max(1, (os.cpu_count() or 1) // 2))
        assert pool.submit(_omp_threads).result(timeout=60) == threads
    finally:
        pool.shutdown()


def _omp_threads() -> str | None:
    return os.environ.get("OMP_NUM_THREADS")


# ----------------------------------------------------------------------------- ray

def test_ray_starts_a_local_cluster_on_demand(tmp_path):
    """--executor ray without an address: a local cluster for the run, shut down after it."""
    pytest.importorskip("ray")
    log = tmp_path / "calls.log"
    argv, env = _cli(tmp_path, log, "--steps", "2", "1", "--executor", "ray", "--workers", "2",
                     sleep="0")
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    assert "2/2 points complete" in out.stdout and "local cluster" in out.stdout


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster on 127.0.0.1 for this module: its address."""
    pytest.importorskip("ray")
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO)}
    head = subprocess.Popen([sys.executable, "-c", HEAD], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    address = _read_line(head, timeout=120)
    if not address:
        head.kill()
        pytest.fail("the local Ray cluster did not start within 120 s")
    yield address
    head.stdin.close()  # the head shuts its cluster down
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()


def _read_line(proc, timeout: float) -> str:
    out: list = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline().strip()),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


def _cli(tmp_path, log: Path, *extra, sleep="0.3") -> tuple[list, dict]:
    argv = [sys.executable, "-m", "ridgeline.cli", "sweep", "--slice", "lr-wd", "--preset",
            "tiny", "--quiet", "--objective", SLOW, "--storage", str(tmp_path / "j.journal"),
            *extra]
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO), "RIDGELINE_TEST_LOG": str(log),
           "RIDGELINE_TEST_SLEEP": sleep}
    return argv, env


def test_ray_sweep_spreads_points_over_two_workers(tmp_path, ray_cluster):
    log = tmp_path / "calls.log"
    argv, env = _cli(tmp_path, log, "--steps", "3", "2", "--ray-address", ray_cluster,
                     "--workers", "2")
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    assert "6/6 points complete" in out.stdout and "ray at" in out.stdout
    _assert_each_point_complete_once(_study(tmp_path / "j.journal"),
                                     make_grid("lr-wd", "tiny", steps=(3, 2)))
    calls = _calls(log)
    assert sorted(Counter(k for k, _, _ in calls).values()) == [1] * 6
    assert len({p for _, p, _ in calls}) == 2  # two Ray worker processes shared the grid
    assert {t for _, _, t in calls} == {"1"}  # 2 CPUs // 2 workers each
    owner = _study(tmp_path / "j.journal").trials[0].user_attrs[st.OWNER_ATTR]
    assert owner["worker"].startswith("ray-") and owner["ray_node"]


def test_killed_ray_worker_point_is_rerun(tmp_path, ray_cluster):
    log = tmp_path / "calls.log"
    argv, env = _cli(tmp_path, log, "--steps", "3", "2", "--ray-address", ray_cluster,
                     "--workers", "2", sleep="0.5")
    killed: list = []
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killer = _kill_first_caller(log, killed)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    killer.join()
    assert proc.returncode == 0, stderr
    assert killed and "workers lost: 1" in stdout
    _assert_each_point_complete_once(_study(tmp_path / "j.journal"),
                                     make_grid("lr-wd", "tiny", steps=(3, 2)))
    calls = Counter(k for k, _, _ in _calls(log))
    assert calls[killed[0][0]] == 2 and len(calls) == 6


def test_killed_ray_driver_resumes_without_lost_or_duplicated_points(tmp_path, ray_cluster):
    """SIGKILL the coordinator: Ray ends its tasks, and re-running the command finishes the
    grid; finished points are not run again."""
    log = tmp_path / "calls.log"
    argv, env = _cli(tmp_path, log, "--steps", "4", "3", "--ray-address", ray_cluster,
                     "--workers", "2")
    journal = tmp_path / "j.journal"
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(_study(journal).get_trials(
                states=(TrialState.COMPLETE,))) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {t.user_attrs[st.KEY_ATTR]
                   for t in _study(journal).get_trials(states=(TrialState.COMPLETE,))}
    assert 3 <= len(done_before) < 12
    _wait_gone({p for _, p, _ in _calls(log)}, timeout=30)  # Ray reaps the driver's tasks
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    _assert_each_point_complete_once(_study(journal),
                                     make_grid("lr-wd", "tiny", steps=(4, 3)))
    calls = Counter(k for k, _, _ in _calls(log))
    assert all(calls[k] == 1 for k in done_before) and len(calls) == 12


def _wait_gone(pids: set[int], timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end and any(st.process_alive({"pid": p}) for p in pids):
        time.sleep(0.1)


PROBE = """
import json, os, subprocess, sys
from ridgeline.runs import executors
from ridgeline.runs import ledger as st
ex = executors.RayExecutor(1, sys.argv[1])
node = ex.ray.get_runtime_context().get_node_id()
dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                      capture_output=True, text=True).stdout.strip()
me = dict(st.this_process(), host="another-node", ray_node=node)
probe = ex.probe()
print(json.dumps([probe(me), probe(dict(me, pid=int(dead))), probe(dict(me, ray_node="ff")),
                  probe(dict(me, host=st.this_process()["host"]))]))
ex.close()
"""


def test_ray_probe_checks_a_pid_on_its_own_node(tmp_path, ray_cluster):
    """An owner on "another node" is checked by a task pinned to that node: alive, dead, or
    (unknown node / same host: the storage's own rules apply) no verdict."""
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE, ray_cluster], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, False, None, None]
