"""Every training run is an Optuna trial: storage, the RunResult ↔ trial mapping, liveness.

Contract: a RunResult serialises to JSON, and a finished trial's user attrs carry the same
fields under the same names (plus the paper's derived coordinates), so ``trial_to_result``
rebuilds the RunResult exactly and optuna-dashboard shows everything a run reported.

Storage. The default is a JournalStorage file, ``./ridgeline.journal`` (or $RIDGELINE_STORAGE):
an append-only log that several local worker processes write safely (each append takes a lock
file and fsyncs), where SQLite raises "database is locked" under the same load. One file holds
every study, so one ``optuna-dashboard ridgeline.journal`` shows them all. Any SQLAlchemy URL
(``sqlite:///x.db``, ``postgresql://…``) is accepted too.

Trial states. COMPLETE is a finished run: value = test accuracy, or 0.0 with user attr
``diverged=True`` when the loss went non-finite (a diverged point is a result, never re-run).
FAIL is a run that did not finish (its process was killed, or the objective raised): the user
attr ``failure`` says why and a resumed sweep runs that point again. PRUNED marks a duplicate
claim of a point that another trial already covers.

Liveness. JournalStorage has no Optuna heartbeat, so ridgeline records the owner process
(host, pid, start time) and a periodic heartbeat in each RUNNING trial's system attrs. A RUNNING
trial is *stale* when its owner on this host is gone (checked at once, by pid and start time),
or, for an owner on another host, when its heartbeat is older than ``stale_after`` seconds.
Only stale trials are failed and re-run, so a second sweep started beside a live one never
steals its points. Worker loops started by an executor (ridgeline.runs.executors) add tags to their
owner record: ``worker`` (a token the coordinator knows, so a worker it saw die marks its trials
stale at once) and, on Ray, ``ray_node`` (so a pid on another node can be checked there). Those
checks are passed in as a *probe*; without one, other hosts fall back to the heartbeat.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from ridgeline.errors import RidgelineError, first_line
from ridgeline.hparams import HParams

DEFAULT_STORAGE = "ridgeline.journal"
# Optuna's own lock file (so optuna-dashboard and scripts interoperate), but a process killed
# mid-append leaves it behind: it is broken after 5 s instead of Optuna's 30 (appends take ms).
LOCK_GRACE_S = 5
STORAGE_ENV = "RIDGELINE_STORAGE"
# RunResult's fields (tests/test_study.py checks they equal cifar.train.RunResult);
# spelt out so reading a study does not import torch.
RESULT_FIELDS = ("test_acc", "train_loss", "diverged", "epochs", "wall_time", "train_time",
                 "images_per_sec", "hparams", "preset", "seed", "device", "precision",
                 "versions", "extras")
KEY_ATTR = "grid_key"  # user attr: identity of a grid point (hyperparameters, preset, seed)
FAILURE_ATTR = "failure"  # user attr on FAIL/PRUNED trials: why it did not complete
OWNER_ATTR = "ridgeline:owner"  # system attr: {"host", "pid", "start"} of the running process
CLAIMANT_PREFIX = "ridgeline:claimant:"  # system attrs: every process that tried to claim
HEARTBEAT_ATTR = "ridgeline:heartbeat"  # system attr: unix time of the owner's last beat
DIVERGED_VALUE = 0.0  # objective value of a diverged run (below any real accuracy)
PG_CONNECT_TIMEOUT_S = 10  # an unreachable PostgreSQL host fails in seconds, not a TCP timeout
# Extra fields of this process's owner record, set by the executor that started this worker.
_OWNER_TAGS: dict = {}

# Wide fixed ranges: the params are always enqueued values, these only label them for Optuna.
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-8, 1e4, log=True),
    "momentum": FloatDistribution(0.0, 1.0),
    "weight_decay": FloatDistribution(0.0, 1e3),
    "batch_size": IntDistribution(1, 2**20, log=True),
    "seed": IntDistribution(0, 2**31 - 1),
}


# ----------------------------------------------------------------------------- storage

def default_storage() -> str:
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def storage_label(ref) -> str:
    """The storage as a user wrote it, with any password hidden (it goes into error messages)."""
    text = str(ref)
    if "://" in text:
        with contextlib.suppress(Exception):
            from sqlalchemy.engine import make_url

            return make_url(text).render_as_string(hide_password=True)
    return text


def open_storage(ref: str | os.PathLike | BaseStorage | None = None) -> BaseStorage:
    """A URL (``scheme://…``) opens an RDB storage, anything else is a journal file path.

    Failures (bad URL, missing driver, unreachable server, a file that is not a journal) become
    one-line RidgelineErrors naming the storage, since they are user input, not bugs.
    """
    if isinstance(ref, BaseStorage):
        return ref
    ref = default_storage() if ref is None else ref
    text = str(ref)
    try:
        if "://" in text:
            return _open_rdb(text)
        return _open_journal(Path(text))
    except RidgelineError:
        raise
    except Exception as e:  # sqlalchemy/driver/OS errors: many types, all user-facing here
        reason = first_line(e)
        raise RidgelineError(f"cannot open storage {storage_label(text)!r}: {reason}") from None


def _open_rdb(url: str) -> RDBStorage:
    """PostgreSQL gets a driver that is installed and a connect timeout: libpq's default is to
    wait for the OS TCP timeout (minutes) on a host that drops packets, which would hang every
    worker at start-up."""
    if url.startswith(("postgresql", "postgres:")):
        args = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return RDBStorage(_pg_driver(url), engine_kwargs={"connect_args": args})
    return RDBStorage(url)


def _pg_driver(url: str) -> str:
    """A bare ``postgresql://`` (or ``postgres://``) URL names no driver, and SQLAlchemy's
    default changed from psycopg2 to psycopg 3 in 2.1: use whichever is installed (the
    ``postgres`` extra installs psycopg2-binary). An explicit ``+driver`` is kept."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    import importlib.util

    for driver in ("psycopg2", "psycopg"):
        if importlib.util.find_spec(driver):
            return f"postgresql+{driver}://{rest}"
    raise RidgelineError(f"cannot open storage {storage_label(url)!r}: no PostgreSQL driver "
                         f"is installed (pip install 'ridgeline[postgres]')")


def _open_journal(path: Path) -> JournalStorage:
    if path.is_dir():
        raise RidgelineError(f"storage {str(path)!r} is a folder: give a .journal file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes()[:16].startswith(b"SQLite format"):
        raise RidgelineError(f"storage {str(path)!r} is an SQLite file: pass sqlite:///{path}")
    if not _looks_like_journal(path):
        raise RidgelineError(f"storage {str(path)!r} is not an Optuna journal file: "
                             f"give a new or existing .journal path")
    try:
        lock = JournalFileSymlinkLock(str(path), grace_period=LOCK_GRACE_S)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except ValueError as e:  # json/UnicodeDecodeError are ValueErrors
        raise RidgelineError(f"storage {str(path)!r} is not an Optuna journal file ({e})") from None


def _looks_like_journal(path: Path) -> bool:
    """Empty/new, or a first line that is an Optuna journal operation (checked before we
    append to it: JournalStorage skips a bad *last* line silently and would bury it)."""
    if not path.exists():
        return True
    with open(path, "rb") as f:
        first = f.readline()
    if not first:
        return True
    try:
        return "op_code" in json.loads(first)
    except (ValueError, TypeError):
        return False


def journal_path(storage: BaseStorage) -> Path | None:
    """The file behind a JournalFileBackend storage, else None (used for the enqueue lock)."""
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    return Path(path) if path else None


def open_study(name: str, storage=None, create: bool = True) -> optuna.Study:
    """Load study ``name`` (created, maximising test accuracy, when ``create``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no log line per trial
    st = open_storage(storage)
    if create:
        return optuna.create_study(study_name=name, storage=st, direction="maximize",
                                   load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = ", ".join(study_names(st)) or "none"
        raise RidgelineError(f"no study {name!r} in storage {storage_label(storage or '')!r} "
                             f"(studies: {names})") from None


def study_names(storage) -> list[str]:
    return [s.study_name for s in open_storage(storage).get_all_studies()]


# ----------------------------------------------------------------------------- results

def point_key(hp: HParams, preset: str, seed: int) -> str:
    """A grid point's identity; 10 significant digits so float noise never splits a point."""
    parts = [preset] + [f"{k}={v:.10g}" for k, v in hp.to_dict().items()] + [f"seed={seed}"]
    return "|".join(parts)


def point_attrs(hp: HParams, preset: str, seed: int) -> dict:
    """User attrs known before a run: the identity and the paper's derived coordinates."""
    return {KEY_ATTR: point_key(hp, preset, seed), "preset": preset, "seed": seed,
            "hparams": hp.to_dict(), **hp.derived()}


def point_params(hp: HParams, seed: int) -> dict:
    return {"lr": hp.lr, "momentum": hp.momentum, "weight_decay": hp.weight_decay,
            "batch_size": hp.batch_size, "seed": seed}


def result_dict(result) -> dict:
    """A RunResult (or its dict) as a plain dict with exactly RESULT_FIELDS."""
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    missing = [f for f in RESULT_FIELDS if f not in d]
    if missing:
        raise RidgelineError(f"objective result lacks RunResult fields {missing}")
    return {f: d[f] for f in RESULT_FIELDS}


def result_to_attrs(result) -> dict:
    """RunResult → user attrs: its fields under the same names, plus the derived coordinates."""
    d = result_dict(result)
    return {**d, **HParams(**d["hparams"]).derived()}


def trial_value(result) -> float:
    d = result_dict(result)
    return DIVERGED_VALUE if d["diverged"] else float(d["test_acc"])


def trial_to_result(trial: FrozenTrial):
    """The RunResult a COMPLETE trial recorded, or None for any other trial."""
    if trial.state != TrialState.COMPLETE or "diverged" not in trial.user_attrs:
        return None
    from ridgeline.cifar.train import RunResult

    return RunResult.from_dict({f: trial.user_attrs[f] for f in RESULT_FIELDS})


def record_result(study: optuna.Study, trial_id: int, result) -> bool:
    """Write the attrs, then COMPLETE (attrs first: a COMPLETE trial is always whole).

    Returns False when the trial was already finished by someone else (declared stale while
    this process was still running it); that point has been or will be re-run.
    """
    try:
        for k, v in result_to_attrs(result).items():
            study._storage.set_trial_user_attr(trial_id, k, v)
        study._storage.set_trial_state_values(trial_id, TrialState.COMPLETE,
                                              [trial_value(result)])
    except UpdateFinishedTrialError:
        return False
    return True


def finish_unrun(study: optuna.Study, trial_id: int, state: TrialState, why: str) -> bool:
    """Mark a trial that will not complete (FAIL: re-run on resume; PRUNED: duplicate)."""
    try:
        study._storage.set_trial_user_attr(trial_id, FAILURE_ATTR, why)
        study._storage.set_trial_state_values(trial_id, state)
    except UpdateFinishedTrialError:
        return False
    return True


# ----------------------------------------------------------------------------- liveness

def _proc_start(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), so a recycled pid is not mistaken for its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid), **_OWNER_TAGS}


def set_owner_tags(**tags) -> None:
    """Tag every trial this process claims from now on (an executor's worker token, its Ray
    node): a worker process may be reused for several worker loops, so tags are replaced."""
    _OWNER_TAGS.clear()
    _OWNER_TAGS.update({k: v for k, v in tags.items() if v is not None})


def process_alive(owner: dict) -> bool:
    """Whether ``owner`` (a this_process() dict from this host) still runs."""
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if sys.platform.startswith("linux") and owner.get("start") is not None:
        return _proc_start(pid) == owner["start"]
    return True


def claim(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Atomically take a WAITING trial (first RUNNING write wins) and sign it as ours.

    Each claimant first signs under its own key, so a process killed between winning the claim
    and writing OWNER_ATTR still left its name on the trial and is_stale can tell it is gone.
    """
    me = this_process()
    try:
        study._storage.set_trial_system_attr(trial._trial_id, _claimant_key(me), me)
        if not study._storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
            return False
    except UpdateFinishedTrialError:
        return False
    study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, me)
    return True


def _claimant_key(proc: dict) -> str:
    return f"{CLAIMANT_PREFIX}{proc['host']}:{proc['pid']}"


def _owners(trial: FrozenTrial) -> list[dict]:
    """The owner, or failing that every process that tried to claim the trial."""
    if OWNER_ATTR in trial.system_attrs:
        return [trial.system_attrs[OWNER_ATTR]]
    return [v for k, v in trial.system_attrs.items() if k.startswith(CLAIMANT_PREFIX)]


Probe = Callable[[dict], "bool | None"]  # owner record -> alive, dead, or None: cannot tell


def is_stale(trial: FrozenTrial, stale_after: float = 600.0, now: float | None = None,
             probe: Probe | None = None) -> bool:
    """A RUNNING trial nobody is running any more (see the module docstring).

    ``probe`` answers for owners this host cannot check itself (a worker the coordinator saw
    die, a pid on another Ray node); where it cannot tell, the usual rules apply.
    """
    if trial.state != TrialState.RUNNING:
        return False
    owners = _owners(trial)
    verdicts = [probe(o) for o in owners] if probe and owners else []
    if True in verdicts:
        return False
    if verdicts and all(v is False for v in verdicts):
        return True
    if owners and all(o.get("host") == socket.gethostname() for o in owners):
        return not any(process_alive(o) for o in owners)
    last = trial.system_attrs.get(HEARTBEAT_ATTR)
    if last is None:
        start = trial.datetime_start or dt.datetime.now()
        last = start.timestamp()  # naive local time, as Optuna stores it
    return (time.time() if now is None else now) - float(last) > stale_after


def fail_stale_trials(study: optuna.Study, stale_after: float = 600.0,
                      probe: Probe | None = None) -> list[int]:
    """FAIL every stale RUNNING trial (so the sweep re-runs its point); their numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t, stale_after, probe=probe) and finish_unrun(
                study, t._trial_id, TrialState.FAIL, "interrupted: its process is gone"):
            failed.append(t.number)
    return failed


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial_id: int, interval: float = 60.0) -> Iterator[None]:
    """Beat every ``interval`` s while the body runs, so other hosts can tell we are alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # finished under us or storage gone: nothing left to signal
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
