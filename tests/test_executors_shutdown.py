"""Local worker processes when their coordinator is killed, or one of the tuner's is: no
leaked semaphores, no orphans left waiting forever, one error line. Objectives are the
sleeping fakes of tests/test_executors.py; nothing trains."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ridgeline.cli import main

REPO = Path(__file__).resolve().parents[1]
SLOW = "tests.test_executors:slow_objective"


def start_then_kill_coordinator(tmp_path: Path, *argv: str) -> subprocess.Popen:
    """Run ``ridgeline ARGV --workers 2`` in its own process group and SIGKILL the coordinator
    (only) once a worker has started a run."""
    log = tmp_path / "calls.log"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
           "RIDGELINE_TEST_LOG": str(log), "RIDGELINE_TEST_SLEEP": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ridgeline.cli", *argv, "--workers", "2",
                             "--quiet", "--objective", SLOW,
                             "--storage", str(tmp_path / "j.journal")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    assert log.exists(), proc.stderr.read() if proc.poll() is not None else "no run started"
    proc.kill()
    return proc


def stderr_once_all_exited(proc: subprocess.Popen, timeout: float) -> str:
    """The group's stderr, complete once every process holding it (workers, multiprocessing's
    resource tracker) has exited; on timeout, kill what is left of the group and fail."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
        proc.communicate()
        pytest.fail(f"worker processes still running {timeout:g} s after their coordinator "
                    f"was killed")
    return err


def test_a_killed_sweep_coordinator_leaves_no_leaked_semaphores(tmp_path):
    proc = start_then_kill_coordinator(tmp_path, "sweep", "--slice", "lr-wd", "--preset",
                                       "tiny", "--steps", "3", "2")
    err = stderr_once_all_exited(proc, timeout=45)  # orphans finish their run, then stop
    assert "leaked semaphore" not in err and "Traceback" not in err, err


def test_tuner_pool_workers_exit_when_their_coordinator_is_killed(tmp_path):
    proc = start_then_kill_coordinator(tmp_path, "tune", "--preset", "tiny", "--max-evals",
                                       "6", "--out", str(tmp_path / "out"))
    stderr_once_all_exited(proc, timeout=45)


def deadly_when_lr_grows(hp, preset, seed):
    """SIGKILLs its own (pool) worker process above the tiny preset's λ = 0.2."""
    if hp.lr > 0.2:
        os.kill(os.getpid(), signal.SIGKILL)
    return 0.5


def test_a_killed_tuner_worker_is_one_error_line(tmp_path, capsys):
    argv = ["tune", "--preset", "tiny", "--max-evals", "4", "--workers", "2", "--quiet",
            "--objective", "tests.test_executors_shutdown:deadly_when_lr_grows",
            "--storage", str(tmp_path / "j.journal"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "a worker process died" in err and err.endswith("re-run the same command to resume")
