"""2-D log2 grids over two hyperparameters, run as enqueued Optuna trials, resumable.

The grid is ``ridgeline.landscape.grid``; what each point runs is ``ridgeline.runs.objectives``.

Resumption. The coordinator (``run_sweep``) FAILs stale RUNNING trials, then enqueues every
grid point that has no COMPLETE, WAITING or live RUNNING trial; workers claim WAITING trials one
at a time (Optuna's first-RUNNING-write-wins), so N workers never run a point twice and a killed
sweep loses only the runs it had in flight. Points are enqueued seed-major, so a partial sweep
already holds a whole single-seed map.

Workers. Where they run is the executor's business (``ridgeline.runs.executors``: in-process, local
processes, Ray tasks); each worker loop opens the study from the storage reference and claims
points itself. While they run, the coordinator fails the trials of workers that died and
re-queues those points, so a worker killed mid-run costs one re-run, not a hole in the grid.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.landscape.grid import (
    SPEC_ATTR,
    GridPoint,
    GridSpec,
)
from ridgeline.runs import executors, ledger
from ridgeline.runs.objectives import (
    TrainObjective,
    as_result,
    planned_threads,
    resolve_objective,
)

SCAN_S = 2.0  # while workers run, the coordinator re-reads the study this often


# ----------------------------------------------------------------------------- workers

def run_next(study: optuna.Study, objective: Callable, heartbeat_s: float) -> str | None:
    """Run the study's oldest WAITING point to COMPLETE (done/diverged) or FAIL; its outcome,
    or None when the queue was empty. An objective's own error is recorded and the sweep
    goes on; a RidgelineError or an interrupt is recorded and stops it."""

    def fn(trial: optuna.Trial) -> float | None:
        attrs = trial.user_attrs
        if _covered_elsewhere(study, attrs[ledger.KEY_ATTR], trial.number):
            raise ledger.Skip("duplicate of another trial")
        _record_params(trial)
        hp, preset, seed = HParams(**attrs["hparams"]), attrs["preset"], attrs["seed"]
        t0 = time.perf_counter()
        result = as_result(objective(hp, preset, seed), hp, preset, seed,
                           time.perf_counter() - t0)
        for k, v in ledger.result_to_attrs(result).items():
            trial.set_user_attr(k, v)
        return ledger.result_value(result)

    outcome, frozen = ledger.run_queued(study, fn, heartbeat_s=heartbeat_s, is_error=_is_error)
    if frozen is None:
        return None
    if outcome == "failed":
        tqdm.write(f"ridgeline: point {frozen.user_attrs[ledger.KEY_ATTR]} failed: "
                   f"{frozen.user_attrs.get(ledger.FAILURE_ATTR)}", file=sys.stderr)
    return outcome


def _is_error(e: BaseException) -> bool:
    """An objective's own failure (recorded, the sweep goes on), not a user error or Ctrl-C."""
    return isinstance(e, Exception) and not isinstance(e, RidgelineError)


def _covered_elsewhere(study: optuna.Study, key: str, number: int) -> bool:
    """Second line of defence against duplicates (two coordinators enqueueing at once on a
    database storage): the point is done, or an older live trial is running it."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number == number or t.user_attrs.get(ledger.KEY_ATTR) != key:
            continue
        if t.state == TrialState.COMPLETE or (t.number < number and not ledger.is_stale(t)):
            return True
    return False


def _record_params(trial: optuna.Trial) -> None:
    """Suggest each param: Optuna returns the enqueued value and records it as a param."""
    for name, d in ledger.DISTRIBUTIONS.items():
        if isinstance(d, optuna.distributions.IntDistribution):
            trial.suggest_int(name, d.low, d.high, log=d.log)
        else:
            trial.suggest_float(name, d.low, d.high, log=d.log)


def work(study: optuna.Study, keys: set[str], objective: Callable, heartbeat_s: float = 60.0,
         on_done: Callable[[str], None] | None = None,
         should_stop: Callable[[], bool] = lambda: False) -> Counter:
    """Run queued points until none is waiting; outcome counts. ``keys`` (the grid's points)
    is kept for callers; every WAITING trial of a sweep study is one of its grid points."""
    counts: Counter = Counter()
    while not should_stop() and ledger.waiting(study):
        outcome = run_next(study, objective, heartbeat_s)
        if outcome is None:
            break
        counts[outcome] += 1
        if on_done and outcome != "skipped":
            on_done(outcome)
    return counts


def _worker_main(storage, study_name: str, keys: set[str], objective, heartbeat_s: float,
                 stop: Callable[[], bool]) -> Counter:
    """One worker loop, wherever an executor put it: reopen the study and run points until
    none waits (or ``stop()``: its coordinator is gone)."""
    study = ledger.open_study(study_name, storage, create=False)
    return work(study, keys, resolve_objective(objective), heartbeat_s, should_stop=stop)


# ----------------------------------------------------------------------------- coordinator

@dataclass
class SweepReport:
    study: str
    storage: str
    total: int  # grid points × seeds
    complete: int  # of which COMPLETE now (diverged included)
    diverged: int
    ran: Counter  # outcomes of the runs this call made
    running_elsewhere: int  # live RUNNING trials owned by other processes
    requeued: list[int]  # numbers of stale trials failed and re-enqueued
    workers_lost: int = 0  # worker loops that died mid-sweep (their points were re-run)
    executor: str = ""  # where the runs ran, e.g. "processes, 2 workers (1 threads each)"

    def summary(self) -> str:
        failed = self.ran.get("failed", 0)
        text = (f"{self.study}: {self.complete}/{self.total} points complete "
                f"({self.diverged} diverged); this run: {sum(self.ran.values())} run, "
                f"{failed} failed, {len(self.requeued)} interrupted re-queued")
        if self.workers_lost:
            text += f"; workers lost: {self.workers_lost}"
        if self.running_elsewhere:
            text += f"; {self.running_elsewhere} still running in other processes"
        where = f"; {self.executor}" if self.executor else ""
        return text + f" [{self.storage}{where}]"


def grid_status(study: optuna.Study, spec: GridSpec) -> dict[str, Counter]:
    """Per grid key, how many trials are in each state."""
    keys = {p.key for p in spec.points()}
    status: dict[str, Counter] = {k: Counter() for k in keys}
    for t in study.get_trials(deepcopy=False):
        k = t.user_attrs.get(ledger.KEY_ATTR)
        if k in status:
            status[k][t.state] += 1
    return status


COVERED = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)


def enqueue_missing(study: optuna.Study, spec: GridSpec, stale_after: float,
                    probe: ledger.Probe | None = None) -> tuple[int, list]:
    """FAIL stale trials, then enqueue each point with no COMPLETE/WAITING/live RUNNING trial."""
    requeued = ledger.fail_stale(study, stale_after, probe)
    status = grid_status(study, spec)
    n = 0
    for p in spec.points():
        if not any(status[p.key][s] for s in COVERED):
            _enqueue(study, spec, p)
            n += 1
    return n, requeued


def _enqueue(study: optuna.Study, spec: GridSpec, p: GridPoint) -> None:
    ledger.enqueue(study, ledger.point_params(p.hparams, p.seed),
                   ledger.point_attrs(p.hparams, spec.preset, p.seed))


def requeue_interrupted(study: optuna.Study, spec: GridSpec, stale_after: float,
                        probe: ledger.Probe | None = None) -> int:
    """Mid-sweep: FAIL stale trials and re-queue the points whose run was interrupted (not
    those whose objective raised: they are retried by the next sweep, as before); returns
    how many of the grid's trials wait to be run."""
    ledger.fail_stale(study, stale_after, probe)
    points = {p.key: p for p in spec.points()}
    status: dict[str, Counter] = {k: Counter() for k in points}
    interrupted = set()
    for t in study.get_trials(deepcopy=False):
        k = t.user_attrs.get(ledger.KEY_ATTR)
        if k in status:
            status[k][t.state] += 1
            if ledger.interrupted(t):
                interrupted.add(k)
    for k in interrupted:
        if not any(status[k][s] for s in COVERED):
            _enqueue(study, spec, points[k])
            status[k][TrialState.WAITING] += 1
    return sum(c[TrialState.WAITING] for c in status.values())


@contextlib.contextmanager
def _enqueue_lock(ref):
    """Serialise the read-then-enqueue step across processes sharing a journal file (flock is
    released by the kernel if the holder dies, so it can never go stale)."""
    path = ledger.journal_file(ref)
    try:
        import fcntl
    except ImportError:  # Windows: rely on the duplicate check at claim time
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    with open(f"{path}.enqueue.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_sweep(spec: GridSpec, storage=None, study_name: str | None = None, objective=None,
              workers: int | None = None, progress: bool = True, heartbeat_s: float = 60.0,
              stale_after: float = 600.0, executor=None,
              ray_address: str | None = None) -> SweepReport:
    """Run (or resume) every point of ``spec`` in ``storage``; see the module docstring.

    ``executor``: "inprocess", "processes", "ray" or an ``executors.Executor`` (which the
    caller then closes); by default Ray when ``ray_address`` is given, local processes when
    ``workers > 1``, else in-process.
    """
    ref = _portable_ref(storage)
    name = study_name or spec.default_study_name()
    study = ledger.open_study(name, ref)  # before the executor: a bad storage must not start Ray
    ex = executors.make_executor(executor, workers, ray_address)
    with ex if ex is not executor else contextlib.nullcontext(ex):
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        with _enqueue_lock(ref):
            _, requeued = enqueue_missing(study, spec, stale_after, ex.probe())
        keys = {p.key for p in spec.points()}
        ledger.warn_thread_mismatch(study, planned_threads(objective, ex))
        bar = tqdm(total=len(keys), initial=_complete(study, keys), unit="point", desc=name,
                   disable=not progress, dynamic_ncols=True)
        try:
            if isinstance(ex, executors.InProcess):
                ran, lost = work(study, keys, resolve_objective(objective), heartbeat_s,
                                 on_done=lambda _: bar.update(1)), 0
            else:
                ran, lost = _run_workers(study, ref, spec, objective, ex, heartbeat_s,
                                         stale_after, bar)
        finally:
            bar.close()
    report = _report(study, ref, keys, ran, requeued, lost)
    report.executor = ex.describe()
    return report


def _portable_ref(storage):
    """A storage reference that worker processes can reopen (journal paths made absolute)."""
    if storage is None:
        storage = ledger.default_storage()
    if isinstance(storage, (str, os.PathLike)) and "://" not in str(storage):
        return str(Path(storage).resolve())
    return storage


def _complete(study: optuna.Study, keys: set[str]) -> int:
    done = {t.user_attrs.get(ledger.KEY_ATTR)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return len(done & keys)


def _run_workers(study, ref, spec, objective, ex, heartbeat_s, stale_after,
                 bar) -> tuple[Counter, int]:
    """Worker loops on ``ex``, supervised: outcome counts and how many workers were lost."""
    if isinstance(ref, optuna.storages.InMemoryStorage):
        raise RidgelineError(f"the {ex.name} executor needs a file or database storage, "
                             f"not in-memory")
    if objective is None:
        objective = TrainObjective()
    threads = getattr(ex, "threads", None)
    if isinstance(objective, TrainObjective) and objective.threads is None and threads:
        objective = replace(objective, threads=threads)
    if getattr(ex, "nodes", 1) > 1 and ledger.journal_file(ref) is not None:
        tqdm.write(f"ridgeline: warning: a journal file is shared by {ex.nodes} Ray nodes only "
                   f"if {ref} is on a filesystem they all mount; else use a PostgreSQL URL",
                   file=sys.stderr)
    keys = {p.key for p in spec.points()}
    before = _done_counts(study, keys)

    last = {"at": -math.inf, "waiting": 0}

    def tick(dead: frozenset, fresh: bool) -> int:
        """Fail the trials of workers seen to die, re-queue them, show progress: at once when
        a worker ended (``fresh``), else every SCAN_S (a scan reads every trial: cheap in a
        journal, a real query on a database shared by hundreds of runs)."""
        if not fresh and time.monotonic() - last["at"] < SCAN_S:
            return last["waiting"]
        probe = (lambda owner: False if owner.get("worker") in dead else None) if dead else None
        with _enqueue_lock(ref):
            waiting = requeue_interrupted(study, spec, stale_after, probe)
        bar.update(_complete(study, keys) - bar.n)
        last.update(at=time.monotonic(), waiting=waiting)
        return waiting

    args = (ref, study.study_name, keys, objective, heartbeat_s)
    out = executors.supervise(ex, _worker_main, args, tick)
    return _done_counts(study, keys) - before, out["crashed"]


def _done_counts(study: optuna.Study, keys: set[str]) -> Counter:
    """Outcome counts over the grid's finished trials (the multi-worker 'ran' tally)."""
    c: Counter = Counter()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.user_attrs.get(ledger.KEY_ATTR) not in keys:
            continue
        if t.state == TrialState.COMPLETE:
            c["diverged" if t.user_attrs.get("diverged") else "done"] += 1
        elif str(t.user_attrs.get(ledger.FAILURE_ATTR, "")).startswith("error"):
            c["failed"] += 1
    return c


def _report(study, ref, keys, ran: Counter, requeued: list[int], lost: int = 0) -> SweepReport:
    done, diverged, running = set(), set(), 0
    for t in study.get_trials(deepcopy=False):
        k = t.user_attrs.get(ledger.KEY_ATTR)
        if k not in keys:
            continue
        if t.state == TrialState.COMPLETE:
            done.add(k)
            if t.user_attrs.get("diverged"):
                diverged.add(k)
        elif t.state == TrialState.RUNNING and not ledger.is_stale(t):
            running += 1
    return SweepReport(study.study_name, ledger.storage_label(ref), len(keys), len(done),
                       len(diverged), ran, running, requeued, lost)
