"""Sweeps on a real PostgreSQL server: the storage for workers on several machines.

The session fixture starts a throwaway server on 127.0.0.1 (a temp data dir, a free port,
trust auth, fsync off) and removes it afterwards. If the server binaries are missing and we are
root with apt-get, it installs Debian's ``postgresql`` package first (one-time, ~1 min);
otherwise, or if that fails, the tests SKIP and say why. The cluster that Debian's package
creates is never used or started by these tests.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ridgeline.cli import main
from ridgeline.landscape import sweep
from ridgeline.landscape.grid import make_grid
from ridgeline.runs import ledger as st

pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2-binary) is not installed")

SLOW = "tests.test_executors:slow_objective"
INSTALL_TIMEOUT_S = 600


def _pg_bindir() -> Path | None:
    """The folder with initdb and pg_ctl: Debian keeps them off PATH, per major version."""
    found = shutil.which("pg_ctl")
    dirs = ([str(Path(found).resolve().parent)] if found else []) + sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]),
        reverse=True)
    for d in dirs:
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _install_postgres() -> str | None:
    """apt-get install postgresql (as root; updating the package lists if it is not found);
    None on success, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed, and installing it needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    try:
        for cmd in (install, ["apt-get", "update", "-q"], install):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                 timeout=INSTALL_TIMEOUT_S)
            if cmd is install and out.returncode == 0:
                return None
    except subprocess.TimeoutExpired:
        return f"apt-get install postgresql took over {INSTALL_TIMEOUT_S} s"
    tail = (out.stderr.strip().splitlines() or ["?"])[-1]
    return f"apt-get install postgresql failed: {tail}"


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """postgresql://postgres@127.0.0.1:PORT/postgres on a fresh, private server."""
    bindir = _pg_bindir()
    if bindir is None:
        why = _install_postgres()
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip(why or "PostgreSQL binaries not found after installing")
    root = Path(tempfile.mkdtemp(prefix="ridgeline-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    try:
        out = run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                   "-E", "UTF8", "--no-sync"])
        assert out.returncode == 0, out.stderr
        opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
        out = run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                   "-t", "60", "-o", opts, "start"])
        assert out.returncode == 0, out.stdout + out.stderr
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgres_run_each_point_once(tmp_path, postgres_url, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("RIDGELINE_TEST_LOG", str(log))
    monkeypatch.setenv("RIDGELINE_TEST_SLEEP", "0.3")
    spec = make_grid("lr-wd", "tiny", steps=(4, 3))
    rep = sweep.run_sweep(spec, postgres_url, study_name="pg-two-workers", objective=SLOW,
                          executor="processes", workers=2, progress=False)
    assert rep.complete == rep.total == 12 and rep.ran["done"] == 12
    assert "postgresql://postgres@127.0.0.1" in rep.storage
    study = st.open_study("pg-two-workers", postgres_url, create=False)
    done = Counter(t.user_attrs[st.KEY_ATTR]
                   for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert set(done) == {p.key for p in spec.points()} and set(done.values()) == {1}
    assert len(study.trials) == 12  # no duplicate claims, nothing re-run
    calls = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted(Counter(k for k, _, _ in calls).values()) == [1] * 12
    assert len({pid for _, pid, _ in calls}) == 2
    again = sweep.run_sweep(spec, postgres_url, study_name="pg-two-workers", objective=SLOW,
                            workers=2, progress=False)
    assert sum(again.ran.values()) == 0 and again.complete == 12


def test_unreachable_postgres_is_a_one_line_error(tmp_path, capsys):
    port = _free_port()  # nothing listens on it once closed
    argv = ["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "2", "--quiet",
            "--objective", SLOW, "--storage", f"postgresql://u:hunter2@127.0.0.1:{port}/db"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open storage" in err and "hunter2" not in err


def test_bare_postgres_urls_get_an_installed_driver():
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the extra installs psycopg2."""
    assert st._pg_driver("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert st._pg_driver("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


WRITER = """
import sys, time
from ridgeline.runs import ledger
study = ledger.open_study("torn", sys.argv[1], create=False)
trial = ledger.ask(study)
ledger.sign(trial)
print(trial.number, flush=True)
i = 0
while True:
    trial.set_user_attr(f"k{i}", i)
    i += 1
"""


def test_a_connection_killed_mid_transaction_loses_nothing_committed(tmp_path, postgres_url):
    """PostgreSQL's answer to a torn journal line: a transaction cut off with its connection
    is rolled back whole, so the study keeps every committed record and reads cleanly; the
    trial whose writer died is found stale and FAILed like any other."""
    import sqlalchemy

    study = st.open_study("torn", postgres_url)
    for i in range(3):
        st.complete(study, st.ask(study), i / 10)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, postgres_url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    number = int(proc.stdout.readline())
    time.sleep(1.0)  # mid-stream of single-statement transactions
    engine = sqlalchemy.create_engine(st._pg_driver(postgres_url))
    with engine.connect() as c:  # cut every other connection off, server side
        c.execute(sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE pid <> pg_backend_pid() AND datname = 'postgres'"))
    proc.wait(timeout=30)
    assert proc.returncode != 0
    after = st.open_study("torn", postgres_url, create=False)
    done = [t.value for t in after.trials if t.state == TrialState.COMPLETE]
    assert done == [0.0, 0.1, 0.2]
    attrs = after.trials[number].user_attrs
    written = sorted(int(k[1:]) for k in attrs if k.startswith("k"))
    assert written == list(range(len(written)))  # a prefix: no hole, nothing half-written
    assert st.fail_stale(after) == [number]
