"""The figure of one WeightNormHook record: angular updates per layer against the quasi-static
prediction, their ratio, and ‖w‖ per layer along the schedule."""

from __future__ import annotations

from pathlib import Path

from ridgeline.figures import new_figure, save
from ridgeline.science import theory


def plot_diagnostics(diag: dict, path: str | Path, tol: float = 0.1) -> Path:
    """PNG: angular update per layer against the quasi-static prediction along the schedule,
    their ratio with the ±tol band, and the ‖w‖ trajectories per layer."""
    steps, layers = diag["steps"], diag["layers"]
    ratios = theory.angle_ratios(diag)
    fig, axes = new_figure((8, 10), 3, 1, sharex=True)
    for i, name in enumerate(layers):
        axes[0].plot(steps, diag["angle"][name], lw=0.8, label=name)
        axes[1].plot(steps, ratios[i], lw=0.8)
        axes[2].plot(steps, diag["norm"][name], lw=1.0)
    axes[0].plot(steps, theory.predicted_angles(diag), "k--", lw=2,
                 label="√(2ηₜλ(1−β₁)/(1+β₁)) (AdamW)" if _is_adamw(diag) else
                 "√(2λₜα·f(ρ))" + (" (Nesterov)" if diag.get("nesterov") else ""))
    if diag.get("nesterov"):
        axes[0].plot(steps, theory.predicted_angles(diag, nesterov=False), "k:", lw=1.5,
                     label="√(2λₜα/(1+ρ)) (heavy ball)")
    axes[1].axhspan(1 - tol, 1 + tol, color="0.85")
    axes[1].axhline(1, color="k", lw=1)
    _label(axes, diag, tol)
    return save(fig, path)


def _is_adamw(diag: dict) -> bool:
    return diag.get("optimizer") == "adamw"  # records made before AdamW have no "optimizer"


def _label(axes, diag: dict, tol: float) -> None:
    axes[0].set(ylabel="angle ∠(wₜ, wₜ₊₁) [rad]", yscale="log",
                title=(f"AdamW η={diag['peak_lr']:g}, λ={diag['weight_decay']:g}, "
                       f"β₁={diag['beta1']:g}" if _is_adamw(diag) else
                       f"λ={diag['peak_lr']:g}, α={diag['weight_decay']:g}, "
                       f"ρ={diag['momentum']:g}") + f", logged every {diag['every']} steps")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].set(ylabel="measured / predicted", ylim=(0, 2.5))
    axes[1].text(0.01, 0.92, f"±{tol:.0%}", transform=axes[1].transAxes, fontsize=8)
    axes[2].set(ylabel="‖w‖ per layer", yscale="log", xlabel="step")
    for ax in axes:
        ax.axvline(diag["warmup_steps"], color="0.5", ls=":", lw=1)
