"""The three experiments that test the paper's explanation of its flat directions.

docs/theory.md explains what each one tests and why:

- a (symmetry): conv weights ×r at init with λ×r² and α/r² on the convs only (BN and linear
  keep λ, α) is an exact symmetry of training; compare the per-step loss curves with the
  baseline, in fp32. Variants separate the causes of residual differences: r=2 with BN's ε
  scaled by r² (bit-exact: powers of two commute with rounding), r=2 with ε fixed (ε breaks the
  symmetry by O(ε/Var)), r=1.5 with ε scaled (only rounding differs).
- b (λα fixed): λ×k, α÷k for k in {¼, 1, 4}; ‖w‖ should end ×√k apart while λₜ/‖w‖² and the
  angular update converge; final accuracies against seed noise.
- c (λ/(1−ρ) fixed): ρ in {0.8, 0.9, 0.95} with λ scaled by (1−ρ)/(1−ρ₀); final accuracies
  against seed noise, and the angular updates against the (different) predictions.

Units and caches. Every training run is a *unit* with a string key, except that (a)'s baseline
and its three symmetry partners form one unit: comparing them needs their conv weights, which
are far too big to store. Units go through a cache: ``MemoryCache`` for one process
(benchmarks/theory_experiments.py; (b) and (c) share the preset's own runs) or ``StudyCache``,
one Optuna trial per unit, which makes the experiments resumable (``ridgeline reproduce``) and
lets a report rebuild every summary and figure from the storage without training
(``read_only``). Unit results are plain JSON, so both caches give identical summaries.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from ridgeline.errors import RidgelineError
from ridgeline.figures import new_figure, save
from ridgeline.hparams import HParams
from ridgeline.presets import Preset
from ridgeline.runs import ledger
from ridgeline.science import theory
from ridgeline.science.diagnose import HOOK_NAME
from ridgeline.science.diagnostics_plot import plot_diagnostics

EXPERIMENTS = {"a": "symmetry", "b": "lr_wd", "c": "momentum"}  # kind -> result key
TITLES = {"a": "(a) scale symmetry", "b": "(b) λα fixed", "c": "(c) λ/(1−ρ) fixed"}
FIGURES = {"a": ("theory_symmetry.png",),
           "b": ("theory_lr_wd.png", "theory_diagnose_baseline.png"),
           "c": ("theory_momentum.png",)}
SYMMETRY_VARIANTS = [  # (label, r, scale BN ε by r²)
    ("r=2, eps*r^2", 2.0, True),
    ("r=2, eps fixed", 2.0, False),
    ("r=1.5, eps*r^2", 1.5, True),
]
UNIT_ATTR = "unit"  # user attr of a StudyCache trial: the unit's key
RESULT_ATTR = "result"  # user attr: the unit's JSON result


@dataclass
class Setup:
    """What every experiment trains on. ``data`` is a Cifar10, or a zero-argument function that
    loads it: it is called only when a unit is not cached, so a finished experiment can be
    summarised on a machine without the data set."""

    preset: Preset
    data: object
    seeds: int = 3
    every: int = 10  # WeightNormHook logging interval
    device: str = "cpu"
    precision: str = "auto"  # for (b) and (c); (a) always runs in fp32

    def dataset(self):
        if callable(self.data):
            self.data = self.data()
        return self.data


# ----------------------------------------------------------------------------- caches

class NotCached(RidgelineError):
    """A read-only cache lacks a unit: that experiment has not finished."""


class MemoryCache:
    """Units kept for the life of the object."""

    def __init__(self) -> None:
        self.units: dict[str, dict] = {}
        self.computed = 0  # training runs made (not found) through this cache

    def get(self, key: str, compute: Callable[[], dict], runs: int = 1) -> dict:
        if key not in self.units:
            self.units[key] = compute()
            self.computed += runs
        return self.units[key]


class StudyCache:
    """One COMPLETE trial per unit in ``study``. A unit whose run raised (or was interrupted)
    is FAILed at once; one whose process was killed stays RUNNING with an owner record, and
    the next cache on the study FAILs it (the ledger's liveness rules). Either way the unit is
    computed again by the next cache that needs it."""

    def __init__(self, study: optuna.Study, read_only: bool = False) -> None:
        self.study, self.read_only, self.computed = study, read_only, 0
        if not read_only:
            ledger.fail_stale(study)
        self.units = {t.user_attrs[UNIT_ATTR]: t.user_attrs[RESULT_ATTR]
                      for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                      if UNIT_ATTR in t.user_attrs}

    def get(self, key: str, compute: Callable[[], dict], runs: int = 1) -> dict:
        if key in self.units:
            return self.units[key]
        if self.read_only:
            raise NotCached(f"unit {key} is not in study {self.study.study_name!r}")
        trial = ledger.ask(self.study)
        trial.set_user_attr(UNIT_ATTR, key)
        t0 = time.perf_counter()
        try:
            with ledger.alive(trial):
                result = compute()
        except BaseException as e:  # Ctrl-C or a failed run: FAIL now, computed again next time
            ledger.fail(self.study, trial, ledger.error_reason(e))
            raise
        attrs = {"seconds": time.perf_counter() - t0, "runs": runs, RESULT_ATTR: result}
        ledger.complete(self.study, trial, _unit_value(result), attrs)
        self.units[key] = result
        self.computed += runs
        return result


def _unit_value(result: dict) -> float | None:
    """A number for the trial's value (Optuna needs one): the unit's test accuracy."""
    acc = result.get("test_acc", result.get("baseline", {}).get("test_acc"))
    return float(acc) if acc is not None else None  # None: diverged (ledger's encoding)


def study_name(preset: str) -> str:
    return f"diagnostics-{preset}"


# ------------------------------------------------------------------ (a) exact scale symmetry

class LossRecorder:
    """Per-step training losses (kept on the device until the end: no sync per step)."""

    name = "losses"

    def on_train_start(self, model, optimizer, hparams, total_steps):
        self.losses = []

    def before_step(self, step, model, lr):
        pass

    def after_step(self, step, model, lr, loss):
        self.losses.append(loss)

    def result(self):
        import torch

        return {"losses": torch.stack(self.losses).tolist()}


def grouped_train(hp: HParams, setup: Setup, seed: int, r: float, scale_eps: bool) -> dict:
    """train() in fp32 with the conv weights started at r×w and given λ×r², α/r² (parameter
    groups): the symmetry partner of the r=1 run. Returns the losses, the test accuracy and the
    final conv weights divided by r (comparable with the baseline's)."""
    from ridgeline.cifar.train import train
    from ridgeline.science.diagnostics import conv_weights
    from ridgeline.science.param_groups import rescale_scale_invariant, symmetric_param_groups

    holder = {}

    def groups(model):
        rescale_scale_invariant(model, r, scale_bn_eps=scale_eps)
        holder["model"] = model
        return symmetric_param_groups(model, hp.weight_decay, r)

    result = train(hp, setup.preset, seed=seed, device=setup.device, data=setup.dataset(),
                   precision="fp32", hooks=[LossRecorder()], setup=groups)
    convs = [w.detach().double().cpu() / r for _, w in conv_weights(holder["model"])]
    return {"losses": result.extras["losses"]["losses"], "test_acc": result.test_acc,
            "convs": convs}


def compare_runs(base: dict, other: dict) -> dict:
    diff = np.abs(np.subtract(other["losses"], base["losses"]))
    first = {f"first_step_loss_diff_above_{t:g}": _first(diff > t) for t in (1e-6, 1e-3, 1e-1)}
    wdiff = max(float(((a - b).norm() / b.norm()).item())
                for a, b in zip(other["convs"], base["convs"], strict=True))
    return {"max_abs_loss_diff": float(diff.max()),
            "last_10pct_mean_abs_loss_diff": _tail_mean(diff), **first,
            "test_acc": other["test_acc"], "test_acc_diff": other["test_acc"] - base["test_acc"],
            "max_rel_conv_weight_diff": wdiff}


def _tail_mean(x: np.ndarray) -> float:
    return float(np.mean(x[-max(1, len(x) // 10):]))


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _partners(setup: Setup) -> dict:
    """Seed 0's baseline and its symmetry partners, compared while their weights exist."""
    hp = setup.preset.hparams
    base = grouped_train(hp, setup, 0, 1.0, True)
    variants = {}
    for label, r, scale_eps in SYMMETRY_VARIANTS:
        run = grouped_train(hp, setup, 0, r, scale_eps)
        diff = np.abs(np.subtract(run["losses"], base["losses"]))
        variants[label] = {**compare_runs(base, run), "abs_loss_diff": diff.tolist()}
    return {"baseline": {"losses": base["losses"], "test_acc": base["test_acc"]},
            "variants": variants}


def _baseline(setup: Setup, seed: int) -> dict:
    run = grouped_train(setup.preset.hparams, setup, seed, 1.0, True)
    return {"losses": run["losses"], "test_acc": run["test_acc"]}


def symmetry(setup: Setup, cache) -> tuple[dict, dict]:
    """(a): the summary, and the curves for ``plot_symmetry``. The symmetry is deterministic per
    seed, so its partners run for seed 0 only; further seeds are the noise reference the
    differences are judged against."""
    hp, name = setup.preset.hparams, setup.preset.name
    unit = cache.get(f"symmetry-partners|{ledger.point_key(hp, name, 0)}",
                     lambda: _partners(setup), runs=1 + len(SYMMETRY_VARIANTS))
    bases = [unit["baseline"]] + [
        cache.get(f"symmetry-baseline|{ledger.point_key(hp, name, s)}",
                  lambda s=s: _baseline(setup, s)) for s in range(1, setup.seeds)]
    seeds = {s: {"baseline_test_acc": b["test_acc"]} for s, b in enumerate(bases)}
    seeds[0].update({k: {m: x for m, x in v.items() if m != "abs_loss_diff"}
                     for k, v in unit["variants"].items()})
    out = {"variants": {label: _summarise_variant(seeds, label)
                        for label, _, _ in SYMMETRY_VARIANTS},
           "seeds": seeds, "seed_noise": _seed_noise(bases)}
    curves = {k: [np.asarray(v["abs_loss_diff"])] for k, v in unit["variants"].items()}
    curves["seed noise"] = [b["losses"] for b in bases]
    return out, curves


def _seed_noise(bases: list[dict]) -> dict | None:
    if len(bases) < 2:
        return None
    diff = np.abs(np.subtract(bases[1]["losses"], bases[0]["losses"]))
    return {"max_abs_loss_diff_seed1_vs_seed0": float(np.max(diff)),
            "last_10pct_mean_abs_loss_diff": _tail_mean(diff),
            "test_acc_std": statistics.stdev(b["test_acc"] for b in bases)}


def _summarise_variant(seeds: dict, label: str) -> dict:
    rows = [s[label] for s in seeds.values() if label in s]
    return {"max_abs_loss_diff": max(r["max_abs_loss_diff"] for r in rows),
            "max_abs_test_acc_diff": max(abs(r["test_acc_diff"]) for r in rows),
            "max_rel_conv_weight_diff": max(r["max_rel_conv_weight_diff"] for r in rows)}


def plot_symmetry(curves: dict, path: Path) -> None:
    fig, ax = new_figure((8, 4.5))
    for label, _, _ in SYMMETRY_VARIANTS:
        d = np.maximum(curves[label][0], 1e-12)  # 0 differences drawn at the floor
        ax.plot(d, lw=0.8, label=f"{label} vs baseline (seed 0)")
    noise = curves["seed noise"]
    if len(noise) > 1:
        ax.plot(np.abs(np.subtract(noise[1], noise[0])), lw=0.6, color="0.6",
                label="seed 1 vs seed 0 (noise)")
    ax.set(yscale="log", xlabel="step", ylabel="|Δ training loss| (per batch)",
           title="(a) w×r, λ×r², α/r² on the convs, fp32 (1e-12 = identical)")
    ax.legend(fontsize=8)
    save(fig, path)


# ---------------------------------------------------------------- (b), (c) flat directions

def _hooked(hp: HParams, setup: Setup, seed: int) -> dict:
    from ridgeline.cifar.train import train
    from ridgeline.science.diagnostics import WeightNormHook

    return train(hp, setup.preset, seed=seed, device=setup.device, data=setup.dataset(),
                 hooks=[WeightNormHook(setup.every)], precision=setup.precision).to_dict()


def hooked_runs(settings: dict[str, HParams], setup: Setup, cache) -> dict:
    """Every setting × seed, trained with the hook: {label: [RunResult dict, ...]}. Keys hold
    the hyperparameters, so (b) and (c) share the preset's own setting."""
    runs: dict[str, list] = {k: [] for k in settings}
    for seed in range(setup.seeds):
        for label, hp in settings.items():
            key = (f"hooked|{ledger.point_key(hp, setup.preset.name, seed)}|every={setup.every}"
                   f"|precision={setup.precision}")
            runs[label].append(cache.get(key, lambda hp=hp, s=seed: _hooked(hp, setup, s)))
    return runs


def lr_wd_settings(hp: HParams) -> dict[str, HParams]:
    return {f"lr x{k:g}, wd /{k:g}": hp.replace(lr=hp.lr * k, weight_decay=hp.weight_decay / k)
            for k in (0.25, 1.0, 4.0)}


def momentum_settings(hp: HParams) -> dict[str, HParams]:
    """ρ in {0.8, 0.9, 0.95} at the preset's λ/(1−ρ) (the preset itself is kept bit-exact)."""
    out = {}
    for rho in (0.8, 0.9, 0.95):
        h = hp if rho == hp.momentum else hp.replace(
            momentum=rho, lr=hp.lr * (1 - rho) / (1 - hp.momentum))
        out[f"rho={rho:g}, lr={h.lr:.3g}"] = h
    return out


def gmean_over_layers(diag: dict, key: str) -> np.ndarray:
    """Geometric mean over layers at each logged step (layers differ by 10× in ‖w‖)."""
    return np.exp(np.mean([np.log(diag[key][n]) for n in diag["layers"]], axis=0))


def at_step(diag: dict, key: str, step: float) -> float:
    steps = np.asarray(diag["steps"])
    return float(gmean_over_layers(diag, key)[int(np.argmin(np.abs(steps - step)))])


def window_mean(diag: dict, key: str, step: float, frac: float = 0.05) -> float:
    """Mean over the logged steps within ±frac of the run around ``step``: single angles are
    noisy, a window of them is not."""
    steps = np.asarray(diag["steps"])
    near = np.abs(steps - step) <= max(frac * diag["total_steps"], diag["every"])
    return float(gmean_over_layers(diag, key)[near].mean())


def run_summary(run: dict, hp: HParams, ref_diag: dict | None) -> dict:
    diag = run["extras"][HOOK_NAME]
    warm, end = diag["warmup_steps"], diag["steps"][-1]
    times = {"start": 0, "end_of_warmup": warm, "end": end}
    s = {"test_acc": run["test_acc"], "diverged": run["diverged"],
         "norm": {t: at_step(diag, "norm", v) for t, v in times.items()},
         "eff_lr": {t: at_step(diag, "eff_lr", v) for t, v in times.items()},
         "eff_lr_total": {t: at_step(diag, "eff_lr_total", v) for t, v in times.items()},
         "angle": {t: window_mean(diag, "angle", v) for t, v in times.items()},
         "predicted_angle_at_peak": theory.equilibrium_angular_update(
             hp.lr, hp.weight_decay, hp.momentum, nesterov=diag["nesterov"]),
         "relaxation_steps_at_peak": theory.equilibration_steps(hp.lr, hp.weight_decay,
                                                                hp.momentum),
         "status": [vars(p) for p in theory.equilibrium_status(diag)]}
    if ref_diag is not None:
        s["norm_ratio_vs_ref"] = {t: s["norm"][t] / at_step(ref_diag, "norm", v)
                                  for t, v in times.items()}
        for key in ("eff_lr", "eff_lr_total"):
            s[f"{key}_ratio_vs_ref"] = {t: s[key][t] / at_step(ref_diag, key, v)
                                        for t, v in times.items()}
        s["angle_ratio_vs_ref"] = {t: s["angle"][t] / window_mean(ref_diag, "angle", v)
                                   for t, v in times.items()}
    return s


def summarise(runs: dict, settings: dict[str, HParams], ref_label: str) -> dict:
    """Per setting: accuracies over seeds, and the seed-0 trajectory summary against the
    reference setting; overall: how the spread of setting means compares with seed noise."""
    ref_diag = runs[ref_label][0]["extras"][HOOK_NAME]
    out: dict = {"settings": {}}
    for label, results in runs.items():
        accs = [r["test_acc"] for r in results if r["test_acc"] is not None]
        hp = settings[label]
        out["settings"][label] = {
            "hparams": hp.to_dict(), "derived": hp.derived(), "test_accs": accs,
            "mean_acc": statistics.fmean(accs) if accs else None,
            "std_acc": statistics.stdev(accs) if len(accs) > 1 else None,
            "seed0": run_summary(results[0], hp, ref_diag)}
    out["accuracy_vs_noise"] = _vs_noise(out["settings"], ref_label)
    return out


def _vs_noise(settings: dict, ref_label: str) -> dict:
    stds = [s["std_acc"] for s in settings.values() if s["std_acc"] is not None]
    n = min(len(s["test_accs"]) for s in settings.values())
    pooled = math.sqrt(statistics.fmean([v**2 for v in stds])) if stds else None
    ref = settings[ref_label]["mean_acc"]
    diffs = {k: s["mean_acc"] - ref for k, s in settings.items()
             if s["mean_acc"] is not None and ref is not None}
    se = pooled * math.sqrt(2 / n) if pooled else None
    return {"pooled_seed_std": pooled, "n_seeds": n, "mean_diff_vs_ref": diffs,
            "mean_diff_in_standard_errors": {k: d / se for k, d in diffs.items()} if se else None}


def plot_trajectories(runs: dict, path: Path, title: str) -> None:
    fig, axes = new_figure((8, 9.5), 3, 1, sharex=True)
    for i, (label, results) in enumerate(runs.items()):
        diag, c = results[0]["extras"][HOOK_NAME], f"C{i}"
        axes[0].plot(diag["steps"], gmean_over_layers(diag, "norm"), c, label=label)
        axes[1].plot(diag["steps"], gmean_over_layers(diag, "eff_lr"), c)
        axes[2].plot(diag["steps"], _smooth(gmean_over_layers(diag, "angle")), c, lw=1)
        axes[2].plot(diag["steps"], theory.predicted_angles(diag), c, ls="--", lw=1)
    axes[0].set(ylabel="‖w‖ (geo. mean of layers)", yscale="log", title=title)
    axes[0].legend(fontsize=8)
    axes[1].set(ylabel="λₜ/‖w‖² (geo. mean)", yscale="log")
    axes[2].set(ylabel="angle per step (smoothed);\n-- quasi-static prediction", yscale="log",
                xlabel="step (seed 0)")
    save(fig, path)


def _smooth(x: np.ndarray, k: int = 5) -> np.ndarray:
    return np.convolve(x, np.ones(k) / k, mode="same") if len(x) > k else x


def flat(kind: str, setup: Setup, cache, figures: Path | None = None) -> dict:
    """(b) or (c): the summary, and the trajectory figures in ``figures``."""
    settings = (lr_wd_settings if kind == "b" else momentum_settings)(setup.preset.hparams)
    ref_label = list(settings)[1]  # the preset's own setting sits in the middle
    runs = hooked_runs(settings, setup, cache)
    if figures is not None:
        title = "(b) λα fixed: λ×k, α÷k" if kind == "b" else "(c) λ/(1−ρ) fixed, α fixed"
        plot_trajectories(runs, figures / FIGURES[kind][0], f"{title} — {setup.preset.name}")
        if kind == "b":
            plot_diagnostics(runs[ref_label][0]["extras"][HOOK_NAME], figures / FIGURES["b"][1])
    return summarise(runs, settings, ref_label)


def run(kind: str, setup: Setup, cache, figures: Path | None = None) -> dict:
    """Experiment ``kind`` ("a", "b" or "c"): its summary, figures written to ``figures``."""
    if kind not in EXPERIMENTS:
        raise RidgelineError(f"unknown experiment {kind!r}: use one of {', '.join(EXPERIMENTS)}")
    figures = None if figures is None else Path(figures)
    if kind != "a":
        return flat(kind, setup, cache, figures)
    out, curves = symmetry(setup, cache)
    if figures is not None:
        plot_symmetry(curves, figures / FIGURES["a"][0])
    return out


def planned_runs(kind: str, seeds: int, with_b: bool = False) -> int:
    """Training runs experiment ``kind`` needs (``with_b``: (c) shares the preset's own runs
    with (b)), for budgeting."""
    if kind == "a":
        return seeds + len(SYMMETRY_VARIANTS)
    return 3 * seeds - (seeds if kind == "c" and with_b else 0)
