"""Where trials run: in this process, in local worker processes, or as tasks on a Ray cluster.

An executor has one job. It starts *worker loops* (a module-level function and its arguments)
somewhere, and says how each one ended. Each loop opens the shared study itself and pulls its
own trials from it, so nothing about trials passes through the executor, and any number of
loops on any number of machines can share one study. :func:`supervise` keeps ``workers``
loops going and replaces loops that die. Sweeps use it (``ridgeline.landscape.sweep``).
:meth:`Executor.futures` gives the same placement as a ``concurrent.futures.Executor``; that is
the form the tuner takes for its speculative evaluations (``ridgeline.tuner.tune.tune(executor=)``).

* ``inprocess`` (default): one loop, in the calling process.
* ``processes``: spawned local processes, one per device. With CUDA, loop i sees only GPU
  i mod #GPUs (``CUDA_VISIBLE_DEVICES``). On CPU, each process gets ``cores // workers`` torch
  threads, so N loops share the cores instead of oversubscribing them.
* ``ray``: Ray tasks. ``address`` connects to an existing cluster. Without it a local cluster
  is started for the run and shut down after it. A task asks for one GPU where the cluster has
  GPUs, otherwise for ``CPUs // workers`` CPUs, and gets as many torch threads. Ray is an
  optional extra (``pip install 'ridgeline[ray]'``) and is imported only here, only when asked.

Fault tolerance is shared by all three. Each loop tags the trials it claims with a token
(``study.set_owner_tags``). A loop that dies (SIGKILL, OOM, a lost node) is reported as
*crashed*, and so is one that raised an unexpected exception (a lost database connection): the
coordinator treats its token as dead, its RUNNING trials are failed at once and re-queued, and
a replacement loop is started while work is left (a bounded number of times). A loop that
raises a RidgelineError (a user error, e.g. no data) stops the whole run with that one line.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import socket
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ridgeline.errors import RidgelineError, first_line
from ridgeline.runs import ledger

EXECUTORS = ("inprocess", "processes", "ray")
POLL_S = 0.5  # how often the coordinator looks at its workers and the study
CONNECT_TIMEOUT_S = 5.0  # TCP check of a Ray address (ray.init itself retries for minutes)
PROBE_TIMEOUT_S = 20.0  # a liveness probe on another Ray node that has not answered by then
RAY_EXTRA = "pip install 'ridgeline[ray]'"
ENV_PREFIX = "RIDGELINE_"  # the driver's variables that Ray tasks inherit


@dataclass(frozen=True)
class Ended:
    """How one worker loop ended: it returned ``value``, or raised a user ``error`` (one
    line, stops the run), or ``crashed`` (died: its trials are stale, it may be replaced)."""

    token: str
    value: object = None
    error: str | None = None
    crashed: str | None = None


class Worker(ABC):
    """A handle on one running worker loop."""

    token: str

    @abstractmethod
    def poll(self) -> Ended | None:
        """None while the loop runs; how it ended once it has."""

    @abstractmethod
    def interrupt(self) -> None:
        """Ask the loop to stop now (its trial in flight is failed as interrupted)."""


# ----------------------------------------------------------------------------- worker side

def run_loop(fn: Callable, args: tuple, token: str, env: dict, stop: Callable[[], bool],
             tags: dict | None = None) -> tuple[str, object]:
    """Run one worker loop where it was placed: ``("ok", value)`` or ``("error", line)``.

    The environment is applied first, before the objective imports torch or touches CUDA.
    A RidgelineError is returned rather than raised, so every executor reports it the same
    way; any other exception is a bug and propagates.
    """
    apply_env(env)
    ledger.set_owner_tags(worker=token, **(tags or {}))
    try:
        return "ok", fn(*args, stop=stop)
    except RidgelineError as e:
        return "error", str(e)
    finally:
        ledger.set_owner_tags()  # a reused process (Ray's, or this one) must not keep the token


def apply_env(env: dict) -> None:
    """Set this worker's variables, and torch's thread count if torch is already loaded
    (torch reads OMP_NUM_THREADS itself when it is imported later)."""
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS")
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def _thread_env(threads: int | None) -> dict:
    if not threads:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def cuda_devices() -> int:
    """GPUs visible here; 0 without CUDA. Workers are spawned, not forked, so asking here
    leaves them free to be pinned to one device each."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def new_token(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- executors

class Executor(ABC):
    """Where worker loops run; use as a context manager (``with make_executor(...) as ex``)."""

    name: str = ""
    workers: int = 1
    shares_ctrl_c = False  # its workers are in our process group: a terminal ^C reaches them

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook: only Ray has anything to release
        """Release what the executor started (a local Ray cluster)."""

    @abstractmethod
    def launch(self, fn: Callable, args: tuple, token: str) -> Worker:
        """Start ``fn(*args, stop=...)`` as one worker loop tagged ``token``."""

    def futures(self) -> cf.Executor | None:
        """The same placement for single calls (the tuner's); None: the caller's default."""
        return None

    def probe(self) -> ledger.Probe | None:
        """Checks owners on other hosts that the storage alone cannot (Ray nodes)."""
        return None

    def describe(self) -> str:
        return f"{self.name}, {_plural(self.workers, 'worker')}"


class InProcess(Executor):
    """One loop, run to the end inside ``launch``: no pickling, tracebacks stay readable."""

    name = "inprocess"

    def __init__(self, workers: int | None = None) -> None:
        if workers not in (None, 1):
            raise RidgelineError(f"the inprocess executor runs one worker, not {workers}: use "
                                 f"--executor processes or ray for more")
        self.workers = 1

    def launch(self, fn: Callable, args: tuple, token: str) -> Worker:
        kind, value = run_loop(fn, args, token, {}, lambda: False)
        ended = Ended(token, value=value) if kind == "ok" else Ended(token, error=value)
        return _Done(token, ended)

    def futures(self) -> cf.Executor:
        return _Inline()


class _Inline(cf.Executor):
    """Single calls in the caller's thread, at submission (the tuner's workers=1)."""

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # even KeyboardInterrupt: the search re-raises it
            future.set_exception(exc)
        return future


@dataclass
class _Done(Worker):
    token: str
    ended: Ended

    def poll(self) -> Ended | None:
        return self.ended

    def interrupt(self) -> None:
        pass


class LocalProcesses(Executor):
    """Spawned processes on this machine, one per GPU or a share of the cores each."""

    name = "processes"
    shares_ctrl_c = True

    def __init__(self, workers: int | None = None) -> None:
        self.gpus = cuda_devices()
        self.workers = _check_workers(workers) or max(1, self.gpus)
        self.threads = None if self.gpus else max(1, (os.cpu_count() or 1) // self.workers)
        self.ctx = mp.get_context("spawn")  # fork would copy a CUDA context / torch threads
        self.started = 0

    def env_for(self, index: int) -> dict:
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": str(index % self.gpus)}
        return _thread_env(self.threads)

    def launch(self, fn: Callable, args: tuple, token: str) -> Worker:
        env = self.env_for(self.started)
        self.started += 1
        # One pipe per worker for its result: a shared multiprocessing queue would hold named
        # semaphores, which a coordinator killed by a signal leaves behind ("leaked semaphore").
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_process_main, daemon=False, name=f"ridgeline-{token}",
                                args=(fn, args, token, env, send))
        try:
            proc.start()
        except (AttributeError, TypeError, pickle.PicklingError) as e:
            raise RidgelineError(f"cannot send {getattr(fn, '__name__', fn)} and its arguments "
                                 f"to worker processes ({e}): the objective must be a "
                                 f"module-level function or 'module:function'") from None
        finally:
            send.close()  # the worker has its own end: EOF here once it exits
        return _ProcessWorker(token, proc, receive)

    def futures(self) -> cf.Executor:
        slot = self.ctx.Value("i", 0)
        return cf.ProcessPoolExecutor(self.workers, mp_context=self.ctx, initializer=_pool_init,
                                      initargs=(self.gpus, self.threads, slot))

    def describe(self) -> str:
        per = "1 GPU each" if self.gpus else _plural(self.threads, "thread") + " each"
        return f"{super().describe()} ({per})"


def _process_main(fn, args, token, env, send) -> None:
    """A spawned worker: stops taking trials once its coordinator is gone (orphaned workers
    would otherwise sweep on unsupervised)."""
    parent = mp.parent_process()
    try:
        result = run_loop(fn, args, token, env,
                          lambda: parent is not None and not parent.is_alive())
    except KeyboardInterrupt:
        sys.exit(130)
    with contextlib.suppress(OSError):  # BrokenPipeError: the coordinator is gone
        send.send(result)


def _pool_init(gpus: int, threads: int | None, slot) -> None:
    """ProcessPoolExecutor workers: each takes the next device slot (GPU) or its threads, and
    exits when the coordinator dies (an idle pool worker would otherwise wait for work
    forever, and a busy one run on unsupervised)."""
    with slot.get_lock():
        index, slot.value = slot.value, slot.value + 1
    apply_env({"CUDA_VISIBLE_DEVICES": str(index % gpus)} if gpus else _thread_env(threads))
    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent) -> None:
    parent.join()  # returns once the parent process is gone
    os._exit(1)


@dataclass
class _ProcessWorker(Worker):
    token: str
    proc: mp.process.BaseProcess
    receive: mp.connection.Connection
    result: tuple | None = None

    def poll(self) -> Ended | None:
        self._receive()  # as soon as it is sent, so a large result never blocks the worker
        if self.proc.is_alive():
            return None
        self.proc.join()
        self._receive()  # sent just before it exited
        self.receive.close()
        result = self.result
        if result is None:
            code = self.proc.exitcode
            why = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return Ended(self.token, crashed=f"worker process {self.proc.pid} {why}")
        kind, value = result
        return Ended(self.token, value=value) if kind == "ok" else Ended(self.token, error=value)

    def _receive(self) -> None:
        if self.result is None and not self.receive.closed and self.receive.poll():
            with contextlib.suppress(EOFError, OSError):  # EOF: it died without a result
                self.result = self.receive.recv()

    def interrupt(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)


def _check_workers(workers) -> int | None:
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise RidgelineError(f"workers={workers!r} is not allowed: it must be an int >= 1")
    return workers


def make_executor(name: str | Executor | None = None, workers: int | None = None,
                  ray_address: str | None = None) -> Executor:
    """The executor a user asked for. No name: ``ray`` when an address is given, local
    processes when ``workers > 1``, otherwise in-process (the behaviour before executors)."""
    if isinstance(name, Executor):
        return name
    _check_workers(workers)
    if name is None:
        name = "ray" if ray_address else "processes" if (workers or 1) > 1 else "inprocess"
    if name not in EXECUTORS:
        raise RidgelineError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
    if ray_address and name != "ray":
        raise RidgelineError(f"--ray-address needs --executor ray, not {name}")
    if name == "ray":
        return RayExecutor(workers, ray_address)
    return InProcess(workers) if name == "inprocess" else LocalProcesses(workers)


# ----------------------------------------------------------------------------- ray

def import_ray():
    """Ray, or a one-line error saying how to get it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise RidgelineError(f"the ray executor needs Ray: {RAY_EXTRA}") from None
    return ray


class RayExecutor(Executor):
    """Worker loops as Ray tasks on an existing cluster (``address``) or a local one."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.ray = import_ray()
        # Ray's own variable names a cluster too; ray.init() would join it, not start one.
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.connected_here = False
        _check_workers(workers)
        self.connect()
        try:
            self.size(workers)
        except BaseException:
            self.close()
            raise
        self._loop = self.ray.remote(max_retries=0)(_ray_main)
        self._call = self.ray.remote(max_retries=0)(_ray_call)
        self._probe = self.ray.remote(max_retries=0, num_cpus=0)(ledger.process_alive)

    def connect(self) -> None:
        """Join the cluster at ``address``, or start a local one that ``close`` stops.

        The driver's RIDGELINE_* variables go to every task (RIDGELINE_DATA and the like:
        paths that must then exist on every node).
        """
        if self.ray.is_initialized():
            return
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        kwargs = {"runtime_env": {"env_vars": env}} if env else {}
        kwargs["logging_level"] = logging.WARNING  # not Ray's INFO lines around every sweep
        if self.address and self.address != "auto":
            check_reachable(self.address)
        try:
            if self.address:
                self.ray.init(address=self.address, **kwargs)
            else:
                self.ray.init(include_dashboard=False, **kwargs)
        except Exception as e:  # ConnectionError, RuntimeError, ValueError...: all user-facing
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray"
            raise RidgelineError(f"cannot start or join {where}: {first_line(e)}") from None
        self.connected_here = True

    def size(self, workers: int | None) -> None:
        """One GPU per task where the cluster has GPUs (one worker per GPU by default);
        otherwise CPUs // workers per task (one worker per CPU by default), capped by the
        largest node so every task fits somewhere."""
        res = self.ray.cluster_resources()
        self.gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
        self.nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        self.workers = workers or max(1, self.gpus or cpus)
        if self.gpus:
            self.options, self.threads = {"num_gpus": 1}, None
            return
        biggest = max((int(n["Resources"].get("CPU", 0)) for n in self.ray.nodes()
                       if n.get("Alive")), default=1)
        self.threads = max(1, min(cpus // self.workers, biggest))
        self.options = {"num_cpus": self.threads}

    def close(self) -> None:
        if self.connected_here and self.ray.is_initialized():
            self.ray.shutdown()
        self.connected_here = False

    def launch(self, fn: Callable, args: tuple, token: str) -> Worker:
        try:
            ref = self._loop.options(**self.options).remote(fn, args, token,
                                                           _thread_env(self.threads))
        except (TypeError, pickle.PicklingError) as e:
            raise RidgelineError(f"cannot send {getattr(fn, '__name__', fn)} to Ray "
                                 f"({first_line(e)})") from None
        return _RayWorker(token, ref, self.ray)

    def futures(self) -> cf.Executor:
        return _RayFutures(self)

    def probe(self) -> ledger.Probe:
        """Ask a Ray owner's own node whether its pid lives: a task pinned there that needs no
        CPU, so it runs even when the node is busy. A dead node's owners are dead; an unknown
        node (another cluster sharing the study) cannot tell, and the heartbeat decides."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = {n["NodeID"]: n["Alive"] for n in self.ray.nodes()}
        here, cache = socket.gethostname(), {}

        def check(owner: dict) -> bool | None:
            node = owner.get("ray_node")
            if node is None or owner.get("host") == here or node not in alive:
                return None
            if not alive[node]:
                return False
            key = (node, owner.get("pid"), owner.get("start"))
            if key not in cache:
                where = NodeAffinitySchedulingStrategy(node, soft=False)
                ref = self._probe.options(scheduling_strategy=where).remote(owner)
                try:
                    cache[key] = bool(self.ray.get(ref, timeout=PROBE_TIMEOUT_S))
                except Exception:  # timed out or node lost meanwhile: cannot tell
                    cache[key] = None
            return cache[key]

        return check

    def describe(self) -> str:
        where = f"at {self.address}" if self.address else "on a local cluster"
        per = "1 GPU each" if self.gpus else _plural(self.threads, "CPU") + " each"
        return f"ray {where}, {_plural(self.workers, 'worker')} ({per})"


def _ray_main(fn, args, token, env):
    """A Ray task running one worker loop; no stop check: Ray kills the tasks of a dead
    driver itself."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return run_loop(fn, args, token, env, lambda: False, {"ray_node": node})


def _ray_call(fn, args, kwargs, env):
    apply_env(env)
    return fn(*args, **kwargs)


@dataclass
class _RayWorker(Worker):
    token: str
    ref: object
    ray: object

    def poll(self) -> Ended | None:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            kind, value = self.ray.get(self.ref)
        except self.ray.exceptions.RayTaskError as e:  # raised in the loop (storage lost...)
            cause = e.cause or e
            return Ended(self.token, crashed=f"Ray worker loop raised {type(cause).__name__}: "
                                             f"{first_line(cause)}")
        except self.ray.exceptions.RayError as e:  # worker or node died, task cancelled
            return Ended(self.token, crashed=f"Ray worker lost ({type(e).__name__}: "
                                             f"{first_line(e)})")
        return Ended(self.token, value=value) if kind == "ok" else Ended(self.token, error=value)

    def interrupt(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.cancel(self.ref)


class _RayFutures(cf.Executor):
    """Single calls as Ray tasks, for the tuner. Futures are marked running at once: a Ray
    task cannot be taken back, so ``cancel()`` must not pretend it was."""

    def __init__(self, ex: RayExecutor) -> None:
        self.ex = ex

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        ref = self.ex._call.options(**self.ex.options).remote(fn, args, kwargs,
                                                             _thread_env(self.ex.threads))
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()
        ref.future().add_done_callback(lambda done: _copy_outcome(done, future))
        return future


def _copy_outcome(done: cf.Future, future: cf.Future) -> None:
    error = done.exception()
    if error is None:
        future.set_result(done.result())
    else:
        future.set_exception(getattr(error, "cause", None) or error)


# ----------------------------------------------------------------------------- supervision

def supervise(executor: Executor, fn: Callable, args: tuple,
              tick: Callable[[frozenset, bool], int], restarts: int | None = None,
              poll_s: float = POLL_S) -> dict:
    """Run ``executor.workers`` loops of ``fn(*args)`` until all have ended and no work is
    left; returns ``{"values": [...], "crashed": n}``.

    Every ``poll_s`` the coordinator calls ``tick(dead_tokens, fresh)``, which fails the
    trials of dead loops, re-queues their points and returns how many trials wait to be run
    (``fresh``: a loop has just ended, so an answer cached by the tick will not do). While
    trials wait and fewer than ``workers`` loops run, a crashed loop is replaced, at most
    ``restarts`` times (default: 2 per worker), so a point that kills every worker that
    runs it cannot loop forever. A user error in any loop stops the others and is raised.
    """
    budget = 2 * executor.workers if restarts is None else restarts
    live = {t: executor.launch(fn, args, t)
            for t in (new_token(executor.name) for _ in range(executor.workers))}
    values, dead = [], set()
    try:
        while True:
            before = len(live)
            errors = _reap(live, values, dead)
            if errors:
                raise RidgelineError(errors[0])
            waiting = tick(frozenset(dead), len(live) < before or not live)
            if not live and not (waiting and budget > 0):
                break
            for _ in range(min(waiting, executor.workers - len(live), budget)):
                token = new_token(executor.name)
                live[token] = executor.launch(fn, args, token)
                budget -= 1
            if live:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop_all(live, poll_s, signal_them=not executor.shares_ctrl_c)
        raise
    except BaseException:
        _stop_all(live, poll_s)
        raise
    return {"values": values, "crashed": len(dead)}


def _reap(live: dict, values: list, dead: set) -> list[str]:
    errors = []
    for token, worker in list(live.items()):
        ended = worker.poll()
        if ended is None:
            continue
        del live[token]
        if ended.error is not None:
            errors.append(ended.error)
        elif ended.crashed is not None:
            dead.add(token)
            print(f"ridgeline: {ended.crashed}; its trial will be run again", file=sys.stderr)
        else:
            values.append(ended.value)
    return errors


def _stop_all(live: dict, poll_s: float, timeout: float = 30.0, signal_them=True) -> None:
    """Interrupt the loops still running (unless a ^C already did) and give them ``timeout``
    s to record it: their trials in flight end FAIL ("interrupted") and are re-run later."""
    for worker in live.values():
        if signal_them:
            worker.interrupt()
    deadline = time.time() + timeout
    while live and time.time() < deadline:
        for token, worker in list(live.items()):
            if worker.poll() is not None:
                del live[token]
        time.sleep(min(poll_s, 0.1))


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A one-line error for a ``host:port`` nothing answers on (other forms pass through)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RidgelineError(f"cannot reach the Ray cluster at {address!r}: "
                             f"{e.strerror or e} (is `ray start --head` running there?)"
                             ) from None
