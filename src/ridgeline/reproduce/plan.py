"""What `ridgeline reproduce` runs within a budget, what that costs, and where the plan is kept.

Planning. A budget is a number of runs or a duration; a duration becomes runs at an estimated
cost per run: measured (the median wall time of the preset's finished runs in the storage) or
else the preset's stated ``run_seconds``, and the plan says which. The plan is the last rung of
``LADDER`` that fits: each rung adds to the one before (finer grids, more seeds, longer tunes,
another experiment), so a larger budget never buys less of anything. Tuner rungs are caps: a
tune that converges stops early.

The control store. The plan itself is stored (study ``reproduce-PRESET``) and reused while
``--budget`` is unchanged, so a re-run resumes the same work even after the measured cost per
run has changed; beside it, the experiments' setup and one record per session. Only the
functions of the section "control store" touch that study.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import re
import socket
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from optuna.trial import TrialState

from ridgeline.errors import RidgelineError
from ridgeline.landscape.grid import SLICES, GridSpec, make_grid
from ridgeline.presets import PRESETS, get_preset
from ridgeline.runs import ledger
from ridgeline.science import experiments
from ridgeline.versions import versions

FP32_COST = 2.0  # (a) trains in fp32, about twice a bf16 run (README: bf16 is ~2× faster)
MIN_RUN_SECONDS = 1e-3  # a measured median below this (fake objectives) is clamped
STARTS = ("bad", "sensible")

# Each rung changes the plan before it; every change only adds. Grid steps are (λ, other axis):
# λ gets more points because the ridge fit locates the best λ of each row by a parabola. Tuner
# caps are Page's 22 runs from the bad start and < 10 from the sensible one, with the lower
# rung cutting the bad-start climb short and the higher ones leaving the noise threshold room.
LADDER: tuple[dict, ...] = (
    {"steps": (4, 3), "seeds": 1},
    {"tune": (12, 6)},
    {"tune": (22, 10)},
    {"steps": (5, 4)},
    {"steps": (6, 4)},
    {"steps": (6, 5)},
    {"diagnostics": ("b",)},
    {"diagnostics": ("b", "c")},
    {"diagnostics": ("b", "c", "a")},
    {"seeds": 2},
    {"tune": (30, 15)},
    {"steps": (7, 5)},
    {"steps": (7, 6)},
    {"seeds": 3},
    {"tune": (40, 20)},
    {"steps": (9, 7)},
)


# ----------------------------------------------------------------------------- budget

@dataclass(frozen=True)
class Budget:
    text: str
    runs: int | None = None
    seconds: float | None = None

    def in_runs(self, run_seconds: float) -> float:
        return self.runs if self.runs is not None else self.seconds / run_seconds


_UNITS = {"h": 3600, "hour": 3600, "hours": 3600, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1}
_BUDGET_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")


def parse_budget(text: str) -> Budget:
    """``"120"`` → 120 runs; ``"3h"``, ``"90m"``, ``"5400s"`` → a duration."""
    m = _BUDGET_RE.fullmatch(str(text).lower())
    if not m or (m[2] and m[2] not in _UNITS) or (not m[2] and not m[1].isdigit()):
        raise RidgelineError(f"bad --budget {text!r}: give a whole number of runs (e.g. 120) "
                             f"or a duration (e.g. 3h, 90m, 5400s)")
    value = float(m[1])
    if value <= 0:
        raise RidgelineError(f"bad --budget {text!r}: it must be more than 0")
    if not m[2]:
        return Budget(str(text), runs=int(m[1]))
    return Budget(str(text), seconds=value * _UNITS[m[2]])


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


# ----------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Plan:
    preset: str
    budget: str
    run_seconds: float  # estimated cost of one run
    cost_source: str  # where run_seconds came from: measured, or the preset's stated estimate
    steps: tuple[int, int] = (4, 3)  # per slice: λ values × values of the other axis
    seeds: int = 1  # per grid point and per experiment setting
    tune: tuple[int, int] = (0, 0)  # max runs from the bad and the sensible start (0: none)
    diagnostics: tuple[str, ...] = ()  # experiments: "a", "b", "c"

    @property
    def slice_runs(self) -> int:
        return len(SLICES) * self.steps[0] * self.steps[1] * self.seeds

    @property
    def diagnostics_cost(self) -> float:
        """In runs of the preset: (a)'s fp32 runs count FP32_COST each."""
        with_b = "b" in self.diagnostics
        runs = {k: experiments.planned_runs(k, self.seeds, with_b) for k in self.diagnostics}
        return sum(n * (FP32_COST if k == "a" else 1.0) for k, n in runs.items())

    @property
    def cost(self) -> float:
        """Runs at most (the tuner may stop early)."""
        return self.slice_runs + sum(self.tune) + self.diagnostics_cost

    def grids(self) -> dict[str, GridSpec]:
        return {name: make_grid(name, self.preset, None, self.steps, None, self.seeds)
                for name in SLICES}

    def tune_evals(self) -> dict[str, int]:
        return dict(zip(STARTS, self.tune, strict=True))

    def describe(self) -> str:
        """The plan as printed before anything runs."""
        a, b = self.steps
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        tuner = (f"bad start ≤ {self.tune[0]} runs, sensible start ≤ {self.tune[1]} runs"
                 if any(self.tune) else "not run (budget)")
        rows = [("landscapes", f"{', '.join(SLICES)}: {a} λ × {b} values, {seeds}",
                 self.slice_runs),
                ("tuner", tuner, sum(self.tune)),
                ("diagnostics", self._describe_diagnostics(), self.diagnostics_cost),
                ("total", f"at most; about {_duration(self.cost * self.run_seconds)}",
                 self.cost)]
        lines = [f"plan for {self.preset}, budget {self.budget}: {self.run_seconds:.3g} s per "
                 f"run ({self.cost_source})"]
        lines += [f"  {label:<12} {text:<62} {runs:>5g} runs" if runs else f"  {label:<12} {text}"
                  for label, text, runs in rows]
        return "\n".join(lines)

    def _describe_diagnostics(self) -> str:
        run = [experiments.TITLES[k] for k in experiments.EXPERIMENTS if k in self.diagnostics]
        skipped = [experiments.TITLES[k] for k in experiments.EXPERIMENTS
                   if k not in self.diagnostics]
        if not run:
            return "not run (budget)"
        return ", ".join(run) + (f"; not run (budget): {', '.join(skipped)}" if skipped else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(**{**d, "steps": tuple(d["steps"]), "tune": tuple(d["tune"]),
                      "diagnostics": tuple(d["diagnostics"])})


def require_sgd(preset: str) -> None:
    """The reproduction is Page's SGD experiments (its lr-momentum slice, its tuner): a known
    preset that trains with another optimiser is a one-line error."""
    p = PRESETS.get(preset)
    if p is not None and p.hparams.optimizer != "sgd":
        raise RidgelineError(f"reproduce runs Page's SGD experiments, but preset {preset!r} "
                             f"trains with {p.hparams.optimizer}: use an SGD preset (e.g. "
                             f"cpu-mini); AdamW's are in docs/adamw.md")


def ladder(preset: str, budget: str, run_seconds: float, cost_source: str) -> list[Plan]:
    """Every rung, cheapest first."""
    require_sgd(preset)
    plan = Plan(preset, budget, run_seconds, cost_source)
    rungs = []
    for change in LADDER:
        plan = replace(plan, **change)
        rungs.append(plan)
    return rungs


def make_plan(preset: str, budget: Budget, run_seconds: float, cost_source: str) -> Plan:
    """The largest rung within ``budget``; an error naming the minimum when none fits."""
    rungs = ladder(get_preset(preset).name, budget.text, run_seconds, cost_source)
    limit = budget.in_runs(run_seconds)
    fitting = [p for p in rungs if p.cost <= limit + 1e-9]
    if not fitting:
        least = rungs[0]
        raise RidgelineError(
            f"--budget {budget.text} ({limit:.3g} runs at {run_seconds:.3g} s/run) is below "
            f"the smallest plan, {least.cost:g} runs ({len(SLICES)} landscapes of "
            f"{least.steps[0]}×{least.steps[1]}, 1 seed): give at least {least.cost:g} runs "
            f"or {_duration(least.cost * run_seconds)}")
    fitting[-1].grids()  # a grid this preset cannot hold fails here, before anything runs
    return fitting[-1]


# ----------------------------------------------------------------------------- cost estimate

def estimate_run_seconds(storage, preset: str) -> tuple[float, str]:
    """Seconds of wall clock per run, and where the number came from: the median over the
    preset's finished, non-diverged runs in ``storage`` (sweeps and tunes) of wall time ÷ how
    many of them ran at its midpoint, so runs made by parallel workers count at the rate they
    were made; else the preset's stated ``run_seconds``."""
    runs = _finished_runs(storage, preset)
    if not runs:
        return (get_preset(preset).run_seconds,
                f"the {preset} preset's stated estimate: no finished {preset} run in the "
                f"storage to measure")
    spans = [(a, b) for _, a, b in runs if a and b]
    per_run = []
    for wall, a, b in runs:
        mid = a + (b - a) / 2 if a and b else None
        overlap = sum(lo < mid < hi for lo, hi in spans) if mid else 1
        per_run.append(wall / max(overlap, 1))
    return (max(statistics.median(per_run), MIN_RUN_SECONDS),
            f"measured: median of {len(runs)} finished {preset} runs in the storage, "
            f"per run in parallel")


def _finished_runs(storage, preset: str) -> list[tuple]:
    """(wall time, start, end) of the preset's finished, non-diverged runs in ``storage``."""
    runs = []
    for t in ledger.all_trials(storage, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("preset") == preset and not ledger.is_diverged(t) and a.get("wall_time"):
            runs.append((float(a["wall_time"]), t.datetime_start, t.datetime_complete))
    return runs


def plan_for(preset: str, budget: Budget, storage=None) -> Plan:
    """The stored plan when it was made for this budget (so a re-run resumes the same work),
    else a new one at the current cost estimate."""
    preset = get_preset(preset).name
    old = stored(storage, preset).get(PLAN_ATTR)
    if old is not None and old["budget"] == budget.text:
        return Plan.from_dict(old)
    return make_plan(preset, budget, *estimate_run_seconds(storage, preset))


# ----------------------------------------------------------------------------- control store
# The study reproduce-PRESET's user attrs: the plan, the experiments' setup, the sessions.
# Only these functions open it.

PLAN_ATTR = "plan"
SETUP_ATTR = "diagnostics_setup"
SESSIONS_ATTR = "sessions"


def control_name(preset: str) -> str:
    return f"reproduce-{preset}"


def stored(storage, preset: str) -> dict:
    """The control study's record ({} when there is none)."""
    return ledger.notes(storage, control_name(preset))


def store(storage, preset: str, key: str, value) -> None:
    """Set one entry of the control study's record (creating the study)."""
    ledger.set_note(storage, control_name(preset), key, value)


def record_session(storage, preset: str, started: float, seconds: float, ran: dict,
                   command: str) -> None:
    """Append one call of `ridgeline reproduce` (when, how long, where, with what)."""
    sessions = list(stored(storage, preset).get(SESSIONS_ATTR, []))
    sessions.append({"started": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                     "seconds": seconds, "ran": dict(ran), "command": command,
                     "machine": machine(), "versions": library_versions()})
    store(storage, preset, SESSIONS_ATTR, sessions)


def machine() -> dict:
    """Host, CPU model, cores and GPU (the GPU only if torch sees CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "gpu": gpu,
            "torch_threads": torch.get_num_threads()}


def library_versions() -> dict:
    return versions(("ridgeline", "torch", "numpy", "optuna", "matplotlib", "scipy"))
