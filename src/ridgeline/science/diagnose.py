"""What ``ridgeline diagnose`` does with a WeightNormHook record: find it in a RunResult or its
saved JSON, and report it (the predictions, the per-phase verdicts, the figure).

Torch-free, unlike the hook (science.diagnostics), so experiments and reports that only read
records never load torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from ridgeline.errors import RidgelineError
from ridgeline.science import theory
from ridgeline.science.diagnostics_plot import plot_diagnostics

HOOK_NAME = "weight_norms"  # the key of the hook's record in RunResult.extras


def diagnostics_of(run: dict) -> dict:
    """The hook's record from a RunResult dict, or a clear error if the run was not hooked."""
    diag = run.get("extras", {}).get(HOOK_NAME)
    if not diag:
        raise RidgelineError(f"the run has no extras[{HOOK_NAME!r}]: produce it with "
                             "`ridgeline diagnose --out run.json` (train with WeightNormHook)")
    return diag


def load_diagnostics(path: str | Path) -> dict:
    """Read a saved RunResult JSON (``ridgeline diagnose --out``) back to its hook record."""
    try:
        run = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RidgelineError(f"no such file {str(path)!r}: pass a RunResult JSON") from None
    except json.JSONDecodeError as e:
        raise RidgelineError(f"{str(path)!r} is not JSON ({e.msg}): pass a RunResult JSON"
                             ) from None
    return diagnostics_of(run)


def report(diag: dict, plot_path: str | Path, tol: float = 0.1) -> str:
    """What ``ridgeline diagnose`` prints: the predictions, the per-phase verdicts, the figure."""
    if not diag["steps"]:
        raise RidgelineError("the log is empty: train for at least one step with --every "
                             "smaller than the run")
    lines = [
        *(_adamw_lines(diag) if diag.get("optimizer") == "adamw" else _sgd_lines(diag)),
        theory.format_status(theory.equilibrium_status(diag, tol=tol), tol),
        f"figure: {plot_diagnostics(diag, plot_path, tol)}",
    ]
    return "\n".join(lines)


def _sgd_lines(diag: dict) -> list[str]:
    lr, wd, rho = diag["peak_lr"], diag["weight_decay"], diag["momentum"]
    nest = diag.get("nesterov", False)
    return [
        f"peak λ={lr:g}, α={wd:g}, ρ={rho:g} ({'Nesterov' if nest else 'heavy ball'}); "
        f"{len(diag['layers'])} scale-invariant layers, logged every {diag['every']} steps",
        f"equilibrium angle at peak λ: {theory.equilibrium_angular_update(lr, wd, rho, nest):.4g}"
        f" rad (heavy-ball √(2λα/(1+ρ)) = {theory.equilibrium_angular_update(lr, wd, rho):.4g})",
        f"relaxation time (1−ρ)/(4λα) at peak λ: "
        f"{theory.equilibration_steps(lr, wd, rho):.0f} steps of {diag['total_steps']}",
    ]


def _adamw_lines(diag: dict) -> list[str]:
    lr, wd, beta1 = diag["peak_lr"], diag["weight_decay"], diag["beta1"]
    return [
        f"AdamW: peak η={lr:g}, decoupled λ={wd:g}, β₁={beta1:g}; {len(diag['layers'])} "
        f"scale-invariant layers, logged every {diag['every']} steps",
        f"equilibrium angle at peak η, √(2ηλ(1−β₁)/(1+β₁)) (Kosson et al. 2024): "
        f"{theory.adamw_equilibrium_angular_update(lr, wd, beta1):.4g} rad",
        f"EMA time scale 1/(ηλ) at peak η (Wang & Aitchison 2025): "
        f"{theory.adamw_ema_timescale(lr, wd):.0f} steps of {diag['total_steps']}",
    ]
