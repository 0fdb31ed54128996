"""Check the paper's explanation of its flat directions on real training runs.

Experiments (docs/theory.md explains what each one tests and why):

- overhead: train a short run with and without WeightNormHook; the hook must cost <= 5%.
- a (symmetry): conv weights ×r at init with λ×r² and α/r² on the convs only (BN and linear
  keep λ, α) is an exact symmetry of training; compare the per-step loss curves with the
  baseline, in fp32. Variants separate the causes of residual differences: r=2 with BN's ε
  scaled by r² (bit-exact: powers of two commute with rounding), r=2 with ε fixed (ε breaks the
  symmetry by O(ε/Var)), r=1.5 with ε scaled (only rounding differs).
- b (λα fixed): λ×k, α÷k for k in {¼, 1, 4}; ‖w‖ should end ×√k apart while λₜ/‖w‖² and the
  angular update converge; final accuracies against seed noise.
- c (λ/(1−ρ) fixed): ρ in {0.8, 0.9, 0.95} with λ scaled by (1−ρ)/(1−ρ₀); final accuracies
  against seed noise, and the angular updates against the (different) predictions.

    python benchmarks/theory_experiments.py --preset cpu-mini --seeds 3      # real run
    python benchmarks/theory_experiments.py --preset tiny --synthetic --seeds 2 \\
        --out /tmp/t.json --figures /tmp/figs                                 # smoke test

Results go to benchmarks/results/theory_experiments.json (rewritten after each experiment) and
figures to docs/figures/theory_*.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ridgeline import theory
from ridgeline.diagnostics import (
    HOOK_NAME,
    WeightNormHook,
    conv_weights,
    plot_diagnostics,
    rescale_scale_invariant,
    symmetric_param_groups,
)
from ridgeline.hparams import HParams
from ridgeline.presets import Preset, get_preset
from ridgeline.train import (
    train,
    versions,
)

ROOT = Path(__file__).resolve().parent.parent
SYMMETRY_VARIANTS = [  # (label, r, scale BN ε by r²)
    ("r=2, eps*r^2", 2.0, True),
    ("r=2, eps fixed", 2.0, False),
    ("r=1.5, eps*r^2", 1.5, True),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-mini")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every setting")
    p.add_argument("--experiments", default="overhead,a,b,c",
                   help="comma-separated subset of: overhead, a, b, c")
    p.add_argument("--every", type=int, default=10, help="WeightNormHook logging interval")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", help="for b, c and overhead (a is fp32)")
    p.add_argument("--data", help="CIFAR-10 folder (default: $RIDGELINE_DATA)")
    p.add_argument("--synthetic", action="store_true", help="random data, for smoke tests")
    p.add_argument("--overhead-epochs", type=int, default=2)
    p.add_argument("--overhead-repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/theory_experiments.json"))
    p.add_argument("--figures", default=str(ROOT / "docs/figures"))
    return p.parse_args(argv)


def load(args, preset: Preset):
    if not args.synthetic:
        from ridgeline.data import load_cifar10

        return load_cifar10(args.data)
    from ridgeline.data import Cifar10

    g = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 128, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        for c in range(10):  # a learnable bright patch per class
            images[labels == c, c % 3, 3 * c:3 * c + 6, 8:24] = 255
        return images, labels

    return Cifar10(*split(max(2048, preset.train_size or 50_000)), *split(500))


# ------------------------------------------------------------------------------- overhead


def short_hparams(hp: HParams, epochs: int) -> HParams:
    return hp.replace(epochs=epochs, warmup_epochs=hp.warmup_epochs * epochs / hp.epochs)


class TimedHook(WeightNormHook):
    """WeightNormHook that also clocks its own calls: on a CPU they run synchronously, so
    this measures the overhead directly, free of the run-to-run noise of shared cores. (On a
    GPU the hook queues work asynchronously and this clock would undercount.)"""

    seconds = 0.0

    def before_step(self, step, model, lr):
        t0 = time.perf_counter()
        super().before_step(step, model, lr)
        self.seconds += time.perf_counter() - t0

    def after_step(self, step, model, lr, loss=None):
        t0 = time.perf_counter()
        super().after_step(step, model, lr, loss)
        self.seconds += time.perf_counter() - t0


def measure_overhead(preset: Preset, data, args) -> dict:
    """Two measures of the hook's cost on a short run: the time spent inside it as a share of
    the plain loop, and the best-of-N end-to-end training time with vs without it (conditions
    alternate, so a slow spell on the shared cores hits all of them alike)."""
    hp = short_hparams(preset.hparams, args.overhead_epochs)
    configs = {"plain": None, f"every={args.every}": args.every, "every=1": 1}
    times: dict[str, list[float]] = {k: [] for k in configs}
    inside: dict[str, list[float]] = {k: [] for k in configs if k != "plain"}
    for _ in range(args.overhead_repeats):
        for label, every in configs.items():
            hooks = [] if every is None else [TimedHook(every)]
            r = train(hp, preset, seed=0, device=args.device, data=data, hooks=hooks,
                      precision=args.precision)
            times[label].append(r.train_time)
            if hooks:
                inside[label].append(hooks[0].seconds)
    best = {k: min(v) for k, v in times.items()}
    return {"hparams": hp.to_dict(), "steps": r.extras[HOOK_NAME]["total_steps"],
            "train_time_s": times, "best_s": best, "hook_seconds": inside,
            "overhead_in_hook": {k: min(v) / best["plain"] for k, v in inside.items()},
            "overhead_end_to_end": {k: best[k] / best["plain"] - 1 for k in best
                                    if k != "plain"}}


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
        return {"losses": torch.stack(self.losses).tolist()}


def grouped_train(hp: HParams, preset: Preset, seed: int, data, r: float, scale_eps: bool,
                  device: str = "cpu", precision: str = "fp32") -> dict:
    """train() with the conv weights started at r×w and given λ×r², α/r² (parameter groups):
    the symmetry partner of the r=1 run."""
    holder = {}

    def setup(model):
        rescale_scale_invariant(model, r, scale_bn_eps=scale_eps)
        holder["model"] = model
        return symmetric_param_groups(model, hp.weight_decay, r)

    result = train(hp, preset, seed=seed, device=device, data=data, precision=precision,
                   hooks=[LossRecorder()], setup=setup)
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


def exp_symmetry(preset: Preset, data, args) -> tuple[dict, dict]:
    hp, out, curves = preset.hparams, {"variants": {}, "seeds": {}}, {}
    for seed in range(args.seeds):
        base = grouped_train(hp, preset, seed, data, 1.0, True, args.device)
        entry = {"baseline_test_acc": base["test_acc"]}
        # The symmetry is deterministic per seed, so its partners run for the first seed only;
        # further seeds are the noise reference the differences are judged against.
        for label, r, scale_eps in SYMMETRY_VARIANTS if seed == 0 else []:
            run = grouped_train(hp, preset, seed, data, r, scale_eps, args.device)
            entry[label] = compare_runs(base, run)
            curves.setdefault(label, []).append(np.abs(np.subtract(run["losses"],
                                                                   base["losses"])))
        curves.setdefault("seed noise", []).append(base["losses"])
        out["seeds"][seed] = entry
    out["variants"] = {label: _summarise_variant(out["seeds"], label)
                       for label, _, _ in SYMMETRY_VARIANTS}
    noise = curves["seed noise"]
    out["seed_noise"] = None if len(noise) < 2 else {
        "max_abs_loss_diff_seed1_vs_seed0": float(np.max(np.abs(np.subtract(noise[1],
                                                                            noise[0])))),
        "last_10pct_mean_abs_loss_diff": _tail_mean(np.abs(np.subtract(noise[1], noise[0]))),
        "test_acc_std": statistics.stdev(s["baseline_test_acc"] for s in out["seeds"].values())}
    return out, curves


def _summarise_variant(seeds: dict, label: str) -> dict:
    rows = [s[label] for s in seeds.values() if label in s]
    return {"max_abs_loss_diff": max(r["max_abs_loss_diff"] for r in rows),
            "max_abs_test_acc_diff": max(abs(r["test_acc_diff"]) for r in rows),
            "max_rel_conv_weight_diff": max(r["max_rel_conv_weight_diff"] for r in rows)}


def plot_symmetry(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
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
    _save(fig, path)


# ---------------------------------------------------------------- (b), (c) flat directions


_RUNS: dict[tuple, object] = {}  # (hparams, seed) -> RunResult: (b) and (c) share the preset's


def hooked_runs(settings: dict[str, HParams], preset, data, args) -> dict:
    """Every setting × seed, trained with the hook. Returns {label: [RunResult, ...]}."""
    runs: dict[str, list] = {k: [] for k in settings}
    for seed in range(args.seeds):
        for label, hp in settings.items():
            key = (hp, seed)
            if key not in _RUNS:
                _RUNS[key] = train(hp, preset, seed=seed, device=args.device, data=data,
                                   hooks=[WeightNormHook(args.every)], precision=args.precision)
            runs[label].append(_RUNS[key])
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


def run_summary(result, hp: HParams, ref_diag: dict | None) -> dict:
    diag = result.extras[HOOK_NAME]
    warm, end = diag["warmup_steps"], diag["steps"][-1]
    times = {"start": 0, "end_of_warmup": warm, "end": end}
    s = {"test_acc": result.test_acc, "diverged": result.diverged,
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
    ref_diag = runs[ref_label][0].extras[HOOK_NAME]
    out: dict = {"settings": {}}
    for label, results in runs.items():
        accs = [r.test_acc for r in results if r.test_acc is not None]
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 9.5), sharex=True)
    for i, (label, results) in enumerate(runs.items()):
        diag, c = results[0].extras[HOOK_NAME], f"C{i}"
        axes[0].plot(diag["steps"], gmean_over_layers(diag, "norm"), c, label=label)
        axes[1].plot(diag["steps"], gmean_over_layers(diag, "eff_lr"), c)
        axes[2].plot(diag["steps"], _smooth(gmean_over_layers(diag, "angle")), c, lw=1)
        axes[2].plot(diag["steps"], theory.predicted_angles(diag), c, ls="--", lw=1)
    axes[0].set(ylabel="‖w‖ (geo. mean of layers)", yscale="log", title=title)
    axes[0].legend(fontsize=8)
    axes[1].set(ylabel="λₜ/‖w‖² (geo. mean)", yscale="log")
    axes[2].set(ylabel="angle per step (smoothed);\n-- quasi-static prediction", yscale="log",
                xlabel="step (seed 0)")
    _save(fig, path)


def _smooth(x: np.ndarray, k: int = 5) -> np.ndarray:
    return np.convolve(x, np.ones(k) / k, mode="same") if len(x) > k else x


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def exp_flat(kind: str, preset: Preset, data, args, figures: Path) -> dict:
    settings = (lr_wd_settings if kind == "b" else momentum_settings)(preset.hparams)
    ref_label = list(settings)[1]  # the preset's own setting sits in the middle
    runs = hooked_runs(settings, preset, data, args)
    name = "lr_wd" if kind == "b" else "momentum"
    title = ("(b) λα fixed: λ×k, α÷k" if kind == "b" else "(c) λ/(1−ρ) fixed, α fixed")
    plot_trajectories(runs, figures / f"theory_{name}.png", f"{title} — {preset.name}")
    if kind == "b":
        plot_diagnostics(runs[ref_label][0].extras[HOOK_NAME],
                         figures / "theory_diagnose_baseline.png")
    return summarise(runs, settings, ref_label)


# ---------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = get_preset(args.preset)
    data = load(args, preset)
    figures, out_path = Path(args.figures), Path(args.out)
    wanted = {e.strip() for e in args.experiments.split(",")}
    results = {"meta": {"preset": preset.name, "seeds": args.seeds, "device": args.device,
                        "precision": args.precision, "every": args.every,
                        "synthetic": args.synthetic, "versions": versions(),
                        "torch_threads": torch.get_num_threads(),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    steps = {
        "overhead": lambda: measure_overhead(preset, data, args),
        "a": lambda: _symmetry(preset, data, args, figures),
        "b": lambda: exp_flat("b", preset, data, args, figures),
        "c": lambda: exp_flat("c", preset, data, args, figures),
    }
    keys = {"overhead": "overhead", "a": "symmetry", "b": "lr_wd", "c": "momentum"}
    for exp, run in steps.items():
        if exp in wanted:
            t0 = time.perf_counter()
            results[keys[exp]] = run()
            results[keys[exp]]["seconds"] = time.perf_counter() - t0
            _write(results, out_path)
            print(f"{keys[exp]} done in {results[keys[exp]]['seconds']:.0f} s -> {out_path}")
    return results


def _symmetry(preset, data, args, figures: Path) -> dict:
    out, curves = exp_symmetry(preset, data, args)
    plot_symmetry(curves, figures / "theory_symmetry.png")
    return out


def _write(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=_jsonable))


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-able: {type(x)}")


if __name__ == "__main__":
    main()
