"""Every objective call of the tuner as an Optuna trial: run, replay, speculate, recover.

``Calls`` is all the search (``ridgeline.tuner.descent``) talks to: it asks for the value of a point
and gets one, from a COMPLETE trial with the same (params, seed) when there is one (replay),
from a speculative call already finished, or by running the objective now. ``TrialStore`` is
the only code that touches the study. A killed tune therefore loses only the calls in flight:
the next one fails its abandoned RUNNING trials and reuses every finished value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ridgeline.errors import TuneError
from ridgeline.runs import ledger
from ridgeline.tuner.invariants import CoordinateSystem

Objective = Callable[[dict, int], object]  # float | None, or a RunResult (or its dict)

LOG_RANGE = (1e-30, 1e30)  # stored distribution of log-scaled parameters: never binding
COMPLEMENT_MAX = 1 - 1e-9  # momentum-like parameters are stored in [0, 1 - 1e-9]
SEED_MAX = 2**31 - 1
MATCH_TOL = 1e-9  # relative tolerance (in log space) for matching stored params
MARK = "ridgeline"  # user attr marking trials created by this tuner


@dataclass
class Context:
    params: dict
    coords: dict
    coordinate: str | None
    factor: float | None


@dataclass
class _Call:
    """One objective call, i.e. one trial."""

    seed: int
    number: int  # Optuna trial number
    trial: optuna.Trial | None = None  # handle while RUNNING
    value: float = math.nan
    diverged: bool = False
    error: BaseException | None = None
    done: bool = False
    replayed: bool = False
    cancelled: bool = False


@dataclass
class _Point:
    calls: list[_Call]
    run: int | None = None  # set once the search needs it


class Calls:
    """Runs, caches, replays and records objective calls; the search sees only their values."""

    def __init__(self, store, objective, seeds, workers, executor) -> None:
        self.store, self.objective, self.seeds = store, objective, seeds
        self.workers, self.executor = workers, executor
        self.points: dict[tuple[int, ...], _Point] = {}
        self.inflight: dict[Future, tuple[_Point, _Call]] = {}
        self.n_calls = self.n_replayed = 0
        store.recover()

    def need(self, key, ctx: Context, number: int, level: int = 1) -> _Point:
        """The point's calls, one per seed, run or replayed (``level`` is the search's
        replicate level: ``tune`` keeps it at 1 and scores each point with its fixed seeds)."""
        point = self.points.get(key) or self.start(key, ctx)
        point.run = number
        for call in point.calls:
            if call.done and call.trial is not None and call.error is None:
                self.store.finish(call, point)  # speculative result now needed
        while not all(c.done for c in point.calls):
            self.harvest(block=True)
        failed = next((c.error for c in point.calls if c.error is not None), None)
        if failed is not None:
            raise failed
        return point

    def speculate(self, key, ctx: Context, room: int) -> bool:
        """Start ``key`` if a worker is idle; False once there is no room for more."""
        if self.workers == 1:
            return False
        self.harvest(block=False)
        pending = sum(1 for p in self.points.values() if p.run is None)
        if len(self.inflight) + len(self.seeds) > self.workers or pending >= room:
            return False
        if key not in self.points:
            self.start(key, ctx)
        return True

    def start(self, key, ctx: Context) -> _Point:
        point = _Point([])
        self.points[key] = point
        for seed in self.seeds:
            call = self.store.replay(ctx.params, seed)
            if call is None:
                call = self.store.create(ctx, seed, self.seeds.index(seed))
                future = self.executor.submit(_evaluate, self.objective, ctx.params, seed)
                self.inflight[future] = (point, call)
                self.n_calls += 1
            else:
                self.n_replayed += 1
            point.calls.append(call)
        return point

    def harvest(self, block: bool) -> None:
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=None if block else 0,
                       return_when=FIRST_COMPLETED)
        for future in done:
            point, call = self.inflight.pop(future)
            self.complete(point, call, future)

    def complete(self, point: _Point, call: _Call, future: Future) -> None:
        call.done = True
        if future.exception() is not None:
            call.error = future.exception()
            self.store.fail(call)
            return
        call.value, call.diverged, attrs = future.result()
        self.store.annotate(call, attrs)
        if point.run is None:
            self.store.hold(call)
        else:
            self.store.finish(call, point)

    @property
    def n_speculative(self) -> int:
        return sum(
            1
            for p in self.points.values() if p.run is None
            for c in p.calls if not (c.replayed or c.cancelled)
        )

    def close(self, ok: bool) -> None:
        """Finish or cancel what is left. After an error, running calls stay RUNNING (the next
        tune marks them FAIL) and finished-but-unneeded ones stay RUNNING with their value
        stashed (the next tune uses it), so an interrupted tune repeats nothing."""
        self.harvest(block=False)  # record whatever has already finished
        for future, (_, call) in list(self.inflight.items()):
            if future.cancel():  # queued, never started: not an objective call
                self.inflight.pop(future)
                call.done = call.cancelled = True
                self.n_calls -= 1
                call.trial.set_user_attr("cancelled", True)
                self.store.fail(call)
        if not ok:
            return
        while self.inflight:
            self.harvest(block=True)
        for point in self.points.values():
            for call in point.calls:
                if call.trial is not None and call.error is None:
                    self.store.finish(call, point)
        self.store.finish_stale()


def _evaluate(objective: Objective, params: dict, seed: int) -> tuple[float, bool, dict]:
    """Call the objective: (value, diverged, user attrs). None, NaN and ±inf become
    (−inf, diverged); a RunResult gives its test accuracy and its fields as attrs."""
    value, attrs = objective(dict(params), seed), {}
    if value is not None and not isinstance(value, (int, float)):
        attrs = ledger.result_to_attrs(value)
        value = None if attrs["diverged"] else attrs["test_acc"]
    if value is None or not math.isfinite(value := float(value)):
        return -math.inf, True, attrs
    return value, False, attrs


class TrialStore:
    """All Optuna access, from the main thread only.

    Trials are created with ``enqueue_trial`` + ``ask`` so the stored params are exactly the
    point's. Params are the tuned raw hyperparameters plus ``seed``; pass-through keys go in the
    ``fixed`` user attr. A finished call is COMPLETE in the ledger's encoding (a diverged one
    has ``diverged=True``). A speculative call whose result is not yet needed stays RUNNING
    with ``pending_value`` set (None when it diverged).
    """

    def __init__(self, study: optuna.Study, system: CoordinateSystem) -> None:
        self.study, self.space = study, system.space
        self.dists = {
            n: FloatDistribution(0.0, COMPLEMENT_MAX) if n in self.space.complement
            else FloatDistribution(*LOG_RANGE, log=True)
            for n in self.space.names
        } | {"seed": IntDistribution(0, SEED_MAX)}
        self.complete: list[tuple[list[float], int, str, _Call]] = []
        self.stale: list[tuple[list[float], int, str, _Call]] = []

    def recover(self) -> None:
        """Index COMPLETE trials for replay. This tuner's RUNNING trials are abandoned by a
        killed tune: FAIL them, unless they hold a finished speculative value to reuse."""
        self._drop_waiting()
        for t in self.study.get_trials(deepcopy=False):
            ours = t.state == TrialState.RUNNING and t.user_attrs.get(MARK)
            held = ours and "pending_value" in t.user_attrs
            if all(n in t.params for n in self.dists) and (t.state == TrialState.COMPLETE or held):
                value = ledger.outcome(t) if t.state == TrialState.COMPLETE else _pending(t)
                handle = self._adopt(t) if ours else None
                call = _Call(t.params["seed"], handle.number if ours else t.number, handle,
                             value=value, diverged=value == -math.inf, done=True,
                             replayed=True)
                entry = (self.space.base_logs(t.params), t.params["seed"],
                         json.dumps(t.user_attrs.get("fixed", {}), sort_keys=True), call)
                (self.stale if ours else self.complete).append(entry)
            elif ours:
                self.study.tell(t.number, state=TrialState.FAIL)

    def _adopt(self, t) -> optuna.Trial:
        """A held trial of a killed tune, taken over: Optuna gives no handle on another
        process's trial, so its params and attrs move to a new trial of ours and the old one
        is FAILed (the value is reused, nothing runs again)."""
        self.study.enqueue_trial(t.params, user_attrs={**t.user_attrs, "recovered_from": t.number})
        trial = ledger.ask(self.study, self.dists)
        self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        return trial

    def _drop_waiting(self) -> None:
        """Enqueued trials of a tune killed between enqueue and ask are popped and failed."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if any(not t.user_attrs.get(MARK) for t in waiting):
            raise TuneError(
                "the study has WAITING (enqueued) trials not made by ridgeline; the tuner "
                "creates its trials through the queue and would take them over: run them first"
            )
        for _ in waiting:
            self.study.tell(ledger.ask(self.study).number, state=TrialState.FAIL)

    def replay(self, params: Mapping, seed: int) -> _Call | None:
        logs = self.space.base_logs(params)
        fixed = _fixed_json(self.space, params)
        for index in (self.complete, self.stale):
            for i, (other, s, f, call) in enumerate(index):
                if s == seed and f == fixed and all(
                    abs(a - b) <= MATCH_TOL for a, b in zip(logs, other, strict=True)
                ):
                    if index is self.stale:
                        index.pop(i)  # each stale trial is finished once, by whoever takes it
                    return call
        return None

    def create(self, ctx: Context, seed: int, replicate: int) -> _Call:
        params = {n: ctx.params[n] for n in self.space.names} | {"seed": seed}
        attrs = {
            MARK: 1, "coords": ctx.coords, "coordinate": ctx.coordinate, "factor": ctx.factor,
            "replicate": replicate, "fixed": json.loads(_fixed_json(self.space, ctx.params)),
        }
        self.study.enqueue_trial(params, user_attrs=attrs)
        trial = ledger.ask(self.study, self.dists)
        if trial.params != params:
            raise TuneError(f"trial {trial.number} was taken over by another process")
        return _Call(seed, trial.number, trial)

    def annotate(self, call: _Call, attrs: Mapping) -> None:
        """The objective's RunResult fields, written as soon as it returns (a held speculative
        result that a later tune reuses keeps them)."""
        for key, value in attrs.items():
            call.trial.set_user_attr(key, value)

    def hold(self, call: _Call) -> None:
        call.trial.set_user_attr("pending_value", None if call.diverged else call.value)

    def finish(self, call: _Call, point: _Point) -> None:
        attrs = {"speculative": True} if point.run is None else {"run": point.run,
                                                                  "speculative": False}
        self._complete(call, attrs)

    def fail(self, call: _Call) -> None:
        reason = "cancelled" if call.cancelled else ledger.error_reason(call.error or
                                                                        KeyboardInterrupt())
        ledger.fail(self.study, call.trial, reason)
        call.trial = None

    def finish_stale(self) -> None:
        """Stale speculative results this tune never needed: record them as such."""
        for *_, call in self.stale:
            self._complete(call, {"speculative": True})
        self.stale.clear()

    def _complete(self, call: _Call, attrs: dict) -> None:
        ledger.complete(self.study, call.trial, None if call.diverged else call.value, attrs)
        call.trial = None


def _pending(t) -> float:
    """A held speculative value (None, or −inf before the ledger's encoding: diverged)."""
    value = t.user_attrs["pending_value"]
    return -math.inf if value is None or t.user_attrs.get("diverged") else value


def _fixed_json(space, params: Mapping) -> str:
    return json.dumps({k: v for k, v in params.items() if k not in space.names}, sort_keys=True)

