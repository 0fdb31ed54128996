"""The run ledger: every write ridgeline makes to Optuna storage, on Optuna's public API only.

Sweeps, the tuner, the experiments and ``reproduce`` all record their runs here, the same way.

Storage. The default is a JournalStorage file, ``./ridgeline.journal`` (or $RIDGELINE_STORAGE):
an append-only log that several local processes write safely (each append takes Optuna's lock
file and fsyncs). One file holds every study, so ``optuna-dashboard ridgeline.journal`` shows
them all. Any SQLAlchemy URL (``sqlite:///x.db``, ``postgresql://…``) works too; RDB storages
are opened with Optuna's heartbeat (``heartbeat_interval``, ``grace_period``), so a worker that
dies inside ``study.optimize`` has its trial failed by ``optuna.storages.fail_stale_trials``.
A journal whose last line was torn by a crash is repaired on open: the partial line is moved
to ``<journal>.corrupt`` and every complete record is kept (see :func:`_repair_torn_tail`).

Encoding, written once here and read everywhere:

* **COMPLETE** is a finished run. value = the objective's value (test accuracy for training),
  user attr ``diverged=False``.
* **A diverged run** (the loss or the objective went non-finite) is COMPLETE too, with user
  attr ``diverged=True`` and value ``DIVERGED_VALUE`` (0.0, chance-level or below for an
  accuracy). It is a result: it is never run again. Readers use :func:`is_diverged`, never
  the value, so an objective whose real values can be negative is read correctly.
* **FAIL** is a run that did not finish: the objective raised (user attr ``failure`` starts
  with ``error:``), it was interrupted (``interrupted…``), or its process died (no ``failure``
  attr: whoever found it stale could not write one). Every writer runs a FAILed point again.
* **PRUNED** is a trial that ran nothing: a duplicate claim of a point another trial covers,
  or a claim that found the queue empty (``failure`` says which).
* A RunResult's fields are the COMPLETE trial's user attrs under the same names (plus the
  paper's derived coordinates), so :func:`trial_to_result` rebuilds it exactly.

Liveness. JournalStorage has no heartbeat, so this module keeps a small shim of public calls:
the process running a trial signs it (user attr ``ridgeline:owner``: host, pid, start time,
trial number) and beats (``ridgeline:heartbeat``) from a thread while it runs. A RUNNING trial
is *stale* when its owner on this host is gone (pid and start time), or, for another host, when
its last beat is older than ``stale_after``. Executors can pass a *probe* that answers for
owners they supervise (a worker seen to die, a pid on another Ray node). Stale trials are
failed with ``study.tell(number, state=FAIL)``; each writer re-runs their points.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
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
STORAGE_ENV = "RIDGELINE_STORAGE"
# Optuna's own lock file (so optuna-dashboard and scripts interoperate), but a process killed
# mid-append leaves it behind: it is broken after 5 s instead of Optuna's 30 (appends take ms).
LOCK_GRACE_S = 5
PG_CONNECT_TIMEOUT_S = 10  # an unreachable PostgreSQL host fails in seconds, not a TCP timeout
RDB_HEARTBEAT_S = 60  # Optuna's heartbeat on RDB storages; stale after grace period below
RDB_GRACE_S = 600
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")

# RunResult's fields (tests/test_ledger.py checks they equal cifar.train.RunResult); spelt out
# so reading a study does not import torch.
RESULT_FIELDS = ("test_acc", "train_loss", "diverged", "epochs", "wall_time", "train_time",
                 "images_per_sec", "hparams", "preset", "seed", "device", "precision",
                 "versions", "extras", "threads")
OPTIONAL_FIELDS = ("threads",)  # absent from records written before it existed
KEY_ATTR = "grid_key"  # user attr: identity of a grid point (hyperparameters, preset, seed)
DIVERGED_ATTR = "diverged"
FAILURE_ATTR = "failure"  # user attr on FAIL/PRUNED trials: why it did not complete
OWNER_ATTR = "ridgeline:owner"  # user attr: {"host", "pid", "start", "trial", tags…}
HEARTBEAT_ATTR = "ridgeline:heartbeat"  # user attr: unix time of the owner's last beat
DIVERGED_VALUE = 0.0
_OWNER_TAGS: dict = {}  # extra owner fields set by the executor that started this worker

# Wide fixed ranges: params are always enqueued values, these only label them for Optuna.
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


def open_storage(ref: str | os.PathLike | BaseStorage | None = None, *,
                 read_only: bool = False) -> BaseStorage:
    """A URL (``scheme://…``) opens an RDB storage, anything else is a journal file path.

    ``read_only`` (plot, report) never creates or repairs a file. Failures (bad URL, missing
    driver, unreachable server, a file that is not a journal, no write permission) become
    one-line RidgelineErrors naming the storage: they are user input, not bugs.
    """
    if isinstance(ref, BaseStorage):
        return ref
    text = str(default_storage() if ref is None else ref)
    try:
        if "://" in text:
            return _open_rdb(text)
        return _open_journal(Path(text), read_only)
    except RidgelineError:
        raise
    except Exception as e:  # sqlalchemy/driver/OS errors: many types, all user-facing here
        raise RidgelineError(f"cannot open storage {storage_label(text)!r}: "
                             f"{first_line(e)}") from None


def _open_rdb(url: str) -> RDBStorage:
    """RDB with Optuna's heartbeat. PostgreSQL gets an installed driver and a connect timeout
    (libpq's default waits for the OS TCP timeout, minutes, on a host that drops packets)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise RidgelineError(
            f"storage {storage_label(url)!r}: unknown scheme {scheme!r}; use a .journal file "
            f"path, sqlite:///FILE.db, postgresql://USER@HOST/DB or mysql://USER@HOST/DB")
    kwargs: dict = {"heartbeat_interval": RDB_HEARTBEAT_S, "grace_period": RDB_GRACE_S}
    if scheme in ("postgresql", "postgres"):
        url = _pg_driver(url)
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}}
    with warnings.catch_warnings():  # heartbeat_interval: experimental, public all the same
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, **kwargs)


def _pg_driver(url: str) -> str:
    """A bare ``postgresql://`` URL names no driver, and SQLAlchemy's default changed from
    psycopg2 to psycopg 3 in 2.1: use whichever is installed. An explicit ``+driver`` stays."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    import importlib.util

    for driver in ("psycopg2", "psycopg"):
        if importlib.util.find_spec(driver):
            return f"postgresql+{driver}://{rest}"
    raise RidgelineError(f"cannot open storage {storage_label(url)!r}: no PostgreSQL driver "
                         f"is installed (pip install 'ridgeline[postgres]')")


def _open_journal(path: Path, read_only: bool) -> JournalStorage:
    if path.is_dir():
        raise RidgelineError(f"storage {str(path)!r} is a folder: give a .journal file path")
    if read_only and not path.exists():
        raise RidgelineError(f"storage {str(path)!r} does not exist")
    if path.exists() and path.read_bytes()[:16].startswith(b"SQLite format"):
        raise RidgelineError(f"storage {str(path)!r} is an SQLite file: pass sqlite:///{path}")
    if not _looks_like_journal(path):
        raise RidgelineError(f"storage {str(path)!r} is not an Optuna journal file: "
                             f"give a new or existing .journal path")
    if not read_only:
        _check_writable(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileSymlinkLock(str(path), grace_period=LOCK_GRACE_S)
    if not read_only:
        _repair_torn_tail(path, lock)
    try:
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except ValueError as e:  # json/UnicodeDecodeError are ValueErrors
        raise RidgelineError(f"storage {str(path)!r} is not an Optuna journal file ({e})") from None


def _check_writable(path: Path) -> None:
    """Optuna writes the journal and a lock file beside it: both need a writable folder."""
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    for p, what in ((folder, "its folder"), (path, "the file")):
        if p.exists() and not os.access(p, os.W_OK):
            raise RidgelineError(f"storage {str(path)!r} is read-only ({what} cannot be "
                                 f"written): give a writable .journal path")
    if not folder.is_dir():
        raise RidgelineError(f"storage {str(path)!r}: {str(folder)!r} is not a folder")


def _looks_like_journal(path: Path) -> bool:
    """Empty/new, or a first line that is an Optuna journal operation (checked before we
    append to it: JournalStorage skips a bad *last* line silently and would bury it)."""
    if not path.exists():
        return True
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        return True
    try:
        return "op_code" in json.loads(first)
    except (ValueError, TypeError):
        return False


def _repair_torn_tail(path: Path, lock) -> None:
    """A crash mid-append leaves a last line without its newline; the next append would be
    glued onto it and the file lost. Under Optuna's lock: a complete record only lacking its
    newline gets one; a partial one moves to ``<path>.corrupt`` and the file is cut back to
    its last complete record."""
    if not path.exists() or path.stat().st_size == 0:
        return
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if _is_record(tail):
                f.write(b"\n")
                return
            with open(f"{path}.corrupt", "ab") as bad:
                bad.write(tail + b"\n")
            f.truncate(cut)
    finally:
        lock.release()
    print(f"ridgeline: warning: {path} ended in a torn line ({len(tail)} bytes); it was moved "
          f"to {path}.corrupt and every complete record kept", file=sys.stderr)


def _is_record(line: bytes) -> bool:
    try:
        return "op_code" in json.loads(line)
    except (ValueError, TypeError):
        return False


def journal_file(ref) -> Path | None:
    """The journal file a storage reference names (absolute), or None for URLs and objects."""
    if isinstance(ref, (str, os.PathLike)) and "://" not in str(ref):
        return Path(ref).resolve()
    return None


def open_study(name: str, storage=None, *, create: bool = True,
               read_only: bool = False) -> optuna.Study:
    """Load study ``name`` (created, maximising, when ``create``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no log line per trial
    st = open_storage(storage, read_only=read_only)
    if create and not read_only:
        return optuna.create_study(study_name=name, storage=st, direction="maximize",
                                   load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        names = ", ".join(study_names(st)) or "none"
        raise RidgelineError(f"no study {name!r} in storage {storage_label(storage or '')!r} "
                             f"(studies: {names})") from None


def study_names(storage) -> list[str]:
    """The studies in ``storage``; none when its journal file does not exist yet."""
    path = journal_file(default_storage() if storage is None else storage)
    if path is not None and not path.exists():
        return []
    return [s.study_name for s in open_storage(storage, read_only=True).get_all_studies()]


def all_trials(storage, states: tuple | None = None) -> Iterator[FrozenTrial]:
    """Every trial of every study in ``storage`` (none when its journal does not exist)."""
    for name in study_names(storage):
        yield from open_study(name, storage, read_only=True).get_trials(deepcopy=False,
                                                                         states=states)


def notes(storage, name: str) -> dict:
    """The user attrs of study ``name`` ({} when there is none): a study as a small record of
    its own (``reproduce`` keeps its plan and sessions so)."""
    if name not in study_names(storage):
        return {}
    return open_study(name, storage, read_only=True).user_attrs


def set_note(storage, name: str, key: str, value) -> None:
    """Write one entry of study ``name``'s record (the study is created if need be)."""
    open_study(name, storage).set_user_attr(key, value)


# ----------------------------------------------------------------------------- encoding

def point_key(hp: HParams, preset: str, seed: int) -> str:
    """A grid point's identity; 10 significant digits so float noise never splits a point.

    Made from ``hp.to_dict()``, which for SGD leaves out the AdamW fields at their defaults,
    so SGD keys are those of the journals made before AdamW existed; an AdamW key names the
    optimizer (a string, written as it is) and both betas."""
    parts = ([preset] + [f"{k}={v}" if isinstance(v, str) else f"{k}={v:.10g}"
                         for k, v in hp.to_dict().items()] + [f"seed={seed}"])
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
    d = {f: None for f in OPTIONAL_FIELDS} | d
    missing = [f for f in RESULT_FIELDS if f not in d]
    if missing:
        raise RidgelineError(f"objective result lacks RunResult fields {missing}")
    return {f: d[f] for f in RESULT_FIELDS}


def result_to_attrs(result) -> dict:
    """RunResult → user attrs: its fields under the same names, plus the derived coordinates."""
    d = result_dict(result)
    return {**d, **HParams(**d["hparams"]).derived()}


def result_value(result) -> float | None:
    """A RunResult's objective value: its test accuracy, None when it diverged."""
    d = result_dict(result)
    return None if d["diverged"] else float(d["test_acc"])


def is_diverged(trial: FrozenTrial) -> bool:
    """A COMPLETE trial that diverged (the one encoding: user attr ``diverged``)."""
    return trial.state == TrialState.COMPLETE and bool(trial.user_attrs.get(DIVERGED_ATTR))


def outcome(trial: FrozenTrial) -> float | None:
    """A COMPLETE trial's value, −inf when it diverged, None for any other state."""
    if trial.state != TrialState.COMPLETE:
        return None
    return -math.inf if is_diverged(trial) else trial.value


def trial_to_result(trial: FrozenTrial):
    """The RunResult a COMPLETE trial recorded, or None for any other trial."""
    if trial.state != TrialState.COMPLETE or "test_acc" not in trial.user_attrs:
        return None
    from ridgeline.cifar.train import RunResult

    return RunResult.from_dict(result_dict(trial.user_attrs))


def thread_counts(study: optuna.Study) -> set[int]:
    """The CPU thread counts the study's finished runs recorded (see RunResult.threads)."""
    return {t.user_attrs["threads"] for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("threads")}


def warn_thread_mismatch(study: optuna.Study, threads: int | None) -> str | None:
    """One warning line when this run's thread count differs from the study's earlier runs:
    CPU results reproduce only at the same count, so the two sets would not agree exactly."""
    before = thread_counts(study)
    if not threads or not before or before == {threads}:
        return None
    counts = ", ".join(str(n) for n in sorted(before))
    msg = (f"ridgeline: warning: study {study.study_name!r} holds runs made with {counts} CPU "
           f"thread(s), this one uses {threads}: results depend on the thread count, so "
           f"runs at different counts do not reproduce each other")
    print(msg, file=sys.stderr)
    return msg


# ----------------------------------------------------------------------------- writing

def complete(study: optuna.Study, trial: optuna.Trial, value: float | None,
             attrs: Mapping = ()) -> bool:
    """Record a finished run: ``attrs`` first, then COMPLETE (so a COMPLETE trial is always
    whole). ``value`` None or non-finite is a diverged run (see the module docstring).

    False when someone else finished the trial first (found it stale while this process still
    ran it): that point has been or will be run again.
    """
    diverged = value is None or not math.isfinite(value)
    try:
        for k, v in dict(attrs).items():
            trial.set_user_attr(k, v)
        trial.set_user_attr(DIVERGED_ATTR, diverged)
        told = study.tell(trial, DIVERGED_VALUE if diverged else float(value),
                          skip_if_finished=True)
    except UpdateFinishedTrialError:
        return False
    return told.state == TrialState.COMPLETE and told.user_attrs.get(DIVERGED_ATTR) is diverged


def complete_result(study: optuna.Study, trial: optuna.Trial, result) -> bool:
    """:func:`complete` for a RunResult (or its dict): its fields become the user attrs."""
    return complete(study, trial, result_value(result), result_to_attrs(result))


def fail(study: optuna.Study, trial: optuna.Trial, why: str,
         state: TrialState = TrialState.FAIL) -> bool:
    """A trial that will not complete: FAIL (run again later) or PRUNED (ran nothing)."""
    try:
        trial.set_user_attr(FAILURE_ATTR, why)
        told = study.tell(trial, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        return False
    return told.state == state


def interrupted(trial: FrozenTrial) -> bool:
    """A FAIL whose run did not raise: interrupted, or its process died (no reason written)."""
    reason = str(trial.user_attrs.get(FAILURE_ATTR, ""))
    return trial.state == TrialState.FAIL and not reason.startswith("error")


def error_reason(error: BaseException) -> str:
    """The ``failure`` text of a run that raised: ``error: …`` or ``interrupted: …``."""
    if isinstance(error, Exception):
        return f"error: {type(error).__name__}: {first_line(error)}"
    return f"interrupted: {type(error).__name__}"


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
    """Tag every trial this process signs from now on (an executor's worker token, its Ray
    node): a worker process may be reused for several loops, so tags are replaced."""
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


def sign(trial: optuna.Trial) -> None:
    """Mark ``trial`` as run by this process (the liveness shim's owner record)."""
    trial.set_user_attr(OWNER_ATTR, {**this_process(), "trial": trial.number})


def owner(trial: FrozenTrial) -> dict | None:
    """The owner record of this trial; one copied from another trial's attrs does not count."""
    rec = trial.user_attrs.get(OWNER_ATTR)
    return rec if isinstance(rec, dict) and rec.get("trial") == trial.number else None


Probe = Callable[[dict], "bool | None"]  # owner record -> alive, dead, or None: cannot tell


def is_stale(trial: FrozenTrial, stale_after: float = 600.0, now: float | None = None,
             probe: Probe | None = None) -> bool:
    """A RUNNING trial nobody is running any more (see the module docstring)."""
    if trial.state != TrialState.RUNNING:
        return False
    rec = owner(trial)
    verdict = probe(rec) if probe and rec else None
    if verdict is not None:
        return not verdict
    if rec and rec.get("host") == socket.gethostname():
        return not process_alive(rec)
    last = trial.user_attrs.get(HEARTBEAT_ATTR)
    if last is None:
        start = trial.datetime_start or dt.datetime.now()
        last = start.timestamp()  # naive local time, as Optuna stores it
    return (time.time() if now is None else now) - float(last) > stale_after


def fail_stale(study: optuna.Study, stale_after: float = 600.0,
               probe: Probe | None = None) -> list[int]:
    """FAIL every stale RUNNING trial (Optuna's heartbeat check first, then the shim's);
    the numbers the shim failed. Their points are run again by whoever needs them."""
    with warnings.catch_warnings():  # experimental since Optuna 2.9, public all the same
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB with heartbeat; a no-op elsewhere
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t, stale_after, probe=probe):
            told = study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            if told.state == TrialState.FAIL and told.user_attrs.get(FAILURE_ATTR) is None:
                failed.append(t.number)
    return failed


@contextlib.contextmanager
def alive(trial: optuna.Trial, interval: float = 60.0) -> Iterator[None]:
    """Sign ``trial`` and beat every ``interval`` s while the body runs, so other hosts can
    tell it is still running (the shim; RDB storages also get Optuna's own heartbeat inside
    ``study.optimize``)."""
    sign(trial)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            except Exception:  # finished under us or storage gone: nothing left to signal
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ----------------------------------------------------------------------------- queue

def ask(study: optuna.Study, distributions: Mapping | None = None) -> optuna.Trial:
    """``study.ask`` for writers outside ``study.optimize`` (the tuner, the experiments):
    Optuna warns that its RDB heartbeat needs optimize; their liveness is this module's shim."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
        return study.ask(dict(distributions) if distributions else None)


def waiting(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def run_queued(study: optuna.Study, fn: Callable[[optuna.Trial], float | None], *,
               heartbeat_s: float = 60.0, is_error: Callable[[BaseException], bool] | None = None
               ) -> tuple[str, FrozenTrial | None]:
    """Take the oldest WAITING trial (Optuna's ask: first RUNNING write wins) and run
    ``fn(trial)`` on it inside ``study.optimize`` (so RDB storages get Optuna's heartbeat).

    ``fn`` returns the value (None = diverged) after writing its attrs; it may raise
    :class:`Skip` to record a PRUNED trial that ran nothing. An exception for which
    ``is_error`` is true is recorded as FAIL ``error: …`` and swallowed; any other
    (KeyboardInterrupt, a RidgelineError) is recorded as FAIL and re-raised.

    Returns (outcome, trial): outcome is "done", "diverged", "failed", "skipped", or "lost"
    (someone failed the trial as stale while it ran); trial is None when no WAITING trial
    was left (the ask made a fresh trial, recorded PRUNED).
    """
    box: dict = {}

    def objective(trial: optuna.Trial) -> float:
        box["trial"] = trial
        if not any(k in trial.user_attrs for k in (KEY_ATTR, QUEUED_ATTR)):
            raise Skip("nothing was waiting: the queue emptied before this claim")
        with alive(trial, heartbeat_s):
            try:
                value = fn(trial)
            except Skip:
                raise
            except BaseException as e:  # noqa: B036 - recorded, then re-raised or swallowed
                trial.set_user_attr(FAILURE_ATTR, error_reason(e))
                if is_error is not None and is_error(e):
                    raise _Failed() from e
                raise
        diverged = value is None or not math.isfinite(value)
        trial.set_user_attr(DIVERGED_ATTR, diverged)
        box["diverged"] = diverged
        return DIVERGED_VALUE if diverged else float(value)

    try:
        study.optimize(_skip_to_pruned(objective), n_trials=1, catch=(_Failed,))
    except ValueError:  # tell found the trial finished: failed as stale under us
        trial = box.get("trial")
        if trial is None or study.trials[trial.number].state == TrialState.RUNNING:
            raise
        return "lost", study.trials[trial.number]
    frozen = study.trials[box["trial"].number]
    if frozen.state == TrialState.PRUNED:
        none_left = KEY_ATTR not in frozen.user_attrs and QUEUED_ATTR not in frozen.user_attrs
        return "skipped", (None if none_left else frozen)
    if frozen.state == TrialState.FAIL:
        return "failed", frozen
    return ("diverged" if box.get("diverged") else "done"), frozen


QUEUED_ATTR = "ridgeline:queued"  # user attr of every trial a ridgeline writer enqueued


class Skip(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a queued run's ``fn``: record the trial PRUNED with this reason."""


class _Failed(Exception):
    """An objective error already recorded on the trial (caught by study.optimize)."""


def _skip_to_pruned(objective):
    def wrapped(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except Skip as e:
            trial.set_user_attr(FAILURE_ATTR, str(e))
            raise optuna.TrialPruned(str(e)) from None
    return wrapped


def enqueue(study: optuna.Study, params: Mapping, attrs: Mapping) -> None:
    """Queue a point for :func:`run_queued` (marked as ridgeline's)."""
    study.enqueue_trial(dict(params), user_attrs={**attrs, QUEUED_ATTR: True})
