"""The thin command-line layer: each command parses flags and calls one public function.

Every command is two steps: ``check_<command>`` validates all input (flags, ranges, that the
output paths can be written) without loading data or touching a storage, then
``cmd_<command>`` does the work. Any RidgelineError, and any argparse error, becomes one line
on stderr and exit code 2, never a traceback. Output that cannot be written once the work is
done goes to a folder in the temp dir instead, which the error names (``write_or_fallback``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from pathlib import Path

from ridgeline.errors import RidgelineError
from ridgeline.hparams import OPTIMIZERS
from ridgeline.presets import PRESETS, SYMBOLS, get_preset

SEED_MAX = 2**31 - 1  # the seeds a study can record (ledger.DISTRIBUTIONS)
INT_MAX = 2**63 - 1
MAX_GRID_RUNS = 10**6  # sweep: steps × steps × seeds, far beyond any budget
MAX_SPAN = 64  # sweep: octaves each side of the centre, a factor 1.8e19
# Negative numbers, which argparse must read as values rather than options (Parser).
NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that reads -1e-3, -inf and -nan as values, so a negative
    number reaches the range checks (which say what is allowed) instead of being an option."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(_shield_negatives(args), namespace)

    def error(self, message: str):
        self.exit(2, f"ridgeline: error: {message} (see {self.prog} --help)\n")


def _shield_negatives(argv: list[str] | None) -> list[str]:
    """argparse reads a token like ``-inf`` or ``-1e-3`` as an option; a leading space makes it
    a value (argparse checks the first character; float() and int() ignore the space), so a
    negative number reaches the range checks, which say what is allowed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [f" {a}" if NEGATIVE.match(a) else a for a in argv]


def number(text: str) -> float:
    """argparse type of real-valued flags: any float, inf and nan included (the checks decide
    which are allowed), but not a finite literal too large for a float, such as 1e400."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isinf(value) and "inf" not in text.lower():
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: it overflows to infinity")
    return value


def integer(text: str) -> int:
    """argparse type of whole-number flags (of at most 64 bits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if abs(value) > INT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: at most {INT_MAX}")
    return value


# Range checks: (test, what is allowed).
AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
POSITIVE = (lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
NON_NEGATIVE = (lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")
SEED = (lambda v: 0 <= v <= SEED_MAX, f"an integer in [0, {SEED_MAX}]")
SECONDS = (lambda v: v > 0, "a number of seconds > 0 (inf: never)")


def need(args: argparse.Namespace, name: str, test: Callable, allowed: str) -> None:
    """One-line error naming the flag and its value unless it is unset or passes ``test``."""
    value = getattr(args, name, None)
    if value is not None and not test(value):
        raise RidgelineError(f"--{name.replace('_', '-')}={value!r} is not allowed: "
                             f"it must be {allowed}")


def check_writable(flag: str, path, folder: bool = False) -> None:
    """Fail now, before any work, if ``path`` (a file, or with ``folder`` a folder to write
    files into) cannot be written. Creates nothing that stays."""
    why = _unwritable(Path(path), folder)
    if why:
        raise RidgelineError(f"{flag} {path} cannot be written: {why}; give a path in a "
                             f"writable folder")


def _unwritable(path: Path, folder: bool) -> str | None:
    """Why ``path`` cannot be written, or None."""
    try:
        if path.exists():
            if folder != path.is_dir():
                return f"{path} is {'a file, not a folder' if folder else 'a folder'}"
            if not folder:
                with open(path, "ab"):  # opened for writing, left as it is
                    return None
            probe = path
        else:
            probe = path.parent
            while not probe.exists():  # the folders that would be made go in here
                probe = probe.parent
            if not probe.is_dir():
                return f"{probe} is a file, not a folder"
    except OSError as e:
        return e.strerror or str(e)
    try:
        with tempfile.TemporaryFile(dir=probe):
            return None
    except OSError as e:
        return f"no file can be created in {probe} ({e.strerror or e})"


def write_or_fallback(flag: str, path, write: Callable, problems: list[str],
                      folder: bool = False):
    """``write(Path(path))`` and its return value. If that fails at the end of the work (the
    disk filled, the folder went away), ``write`` into a new folder in the temp dir instead,
    so the work is not lost, and add a line saying where to ``problems``, for the error that
    follows the printed results."""
    try:
        return write(Path(path))
    except OSError as e:
        spare = Path(tempfile.mkdtemp(prefix="ridgeline-"))
        spare = spare if folder else spare / Path(path).name
        try:
            value = write(spare)
        except OSError as e2:
            raise RidgelineError(f"{flag} {path} could not be written ({e.strerror or e}), "
                                 f"nor {spare} ({e2.strerror or e2})") from None
        problems.append(f"{flag} {path} could not be written ({e.strerror or e}): "
                        f"saved in {spare} instead")
        return value


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise RidgelineError("; ".join(problems))


def add_hparam_flags(p: argparse.ArgumentParser) -> None:
    """Every hyperparameter as a flag; unset flags keep the preset's value."""
    p.add_argument("--preset", default="cpu-mini", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--lr", type=number, help=f"{SYMBOLS['lr']}: peak learning rate (mean loss)")
    p.add_argument("--momentum", type=number, help=f"{SYMBOLS['momentum']}: Nesterov momentum")
    p.add_argument("--weight-decay", type=number,
                   help=f"{SYMBOLS['weight_decay']}: coupled L2 weight decay")
    p.add_argument("--batch-size", type=integer,
                   help=f"{SYMBOLS['batch_size']}: images per step")
    p.add_argument("--epochs", type=integer)
    p.add_argument("--warmup-epochs", type=number)
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="sgd (Page's Nesterov SGD, coupled decay) or adamw (torch AdamW: "
                        "decoupled decay, w ← w·(1 − lr·weight_decay) per step; --momentum "
                        "unused); default: the preset's")
    p.add_argument("--beta1", type=number, help="β₁: AdamW's first-moment decay (its momentum)")
    p.add_argument("--beta2", type=number, help="β₂: AdamW's second-moment decay")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="CIFAR-10 folder or tarball (default: $RIDGELINE_DATA)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 if not found")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="auto (bf16), bf16, fp16 or fp32")


def add_executor_flags(p: argparse.ArgumentParser) -> None:
    """Where runs go (ridgeline.runs.executors; docs/scaling.md)."""
    p.add_argument("--executor", choices=("inprocess", "processes", "ray"),
                   help="inprocess (default), processes (local, one per GPU or a share of the "
                        "cores each) or ray (tasks on a Ray cluster)")
    p.add_argument("--workers", type=integer, metavar="N",
                   help="parallel runs (default: 1 in-process; processes: one per GPU; ray: "
                        "one per GPU, else one per CPU); N > 1 alone means --executor processes")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join the Ray cluster at HOST:PORT or 'auto' (implies --executor ray; "
                        "without it, --executor ray starts a local cluster for the run)")


def check_executor(args: argparse.Namespace) -> None:
    """What ``executors.make_executor`` would reject, checked before the data and the study."""
    need(args, "workers", *AT_LEAST_1)
    if args.ray_address and args.executor not in (None, "ray"):
        raise RidgelineError(f"--ray-address needs --executor ray, not {args.executor}")
    if args.executor == "inprocess" and args.workers not in (None, 1):
        raise RidgelineError(f"the inprocess executor runs one worker, not {args.workers}: use "
                             f"--executor processes or ray for more")


def hparams_from_args(args: argparse.Namespace):
    preset = get_preset(args.preset)
    overrides = {k: getattr(args, k) for k in
                 ("lr", "momentum", "weight_decay", "batch_size", "epochs", "warmup_epochs",
                  "optimizer", "beta1", "beta2")
                 if getattr(args, k, None) is not None}
    if "epochs" in overrides and "warmup_epochs" not in overrides:
        # Keep the preset's warm-up fraction when only the run length changes.
        frac = preset.hparams.warmup_epochs / preset.hparams.epochs
        overrides["warmup_epochs"] = frac * overrides["epochs"]
    return preset, preset.hparams.replace(**overrides)


def load_data(args: argparse.Namespace):
    from ridgeline.cifar.data import load_cifar10

    return load_cifar10(args.data, download=args.download)


def objective_from_args(args: argparse.Namespace, data=None):
    """``--objective``, or training on CIFAR-10 (``data`` if given). The data is loaded now, so
    that missing data fails here, before any worker starts; Ray tasks load on their node."""
    from ridgeline.runs.objectives import TrainObjective

    if args.objective is not None:
        return args.objective
    if args.executor == "ray" or args.ray_address:
        return TrainObjective(args.data, args.download, args.device, args.precision)
    return TrainObjective(args.data, args.download, args.device, args.precision,
                          data=load_data(args) if data is None else data)


# ----------------------------------------------------------------------------- train

def check_train(args: argparse.Namespace) -> None:
    hparams_from_args(args)
    need(args, "seed", *SEED)
    if args.cuda_graphs:
        from ridgeline.cifar.train import resolve_device

        if resolve_device(args.device).type != "cuda":
            raise RidgelineError("--cuda-graphs needs a CUDA device (--device cuda)")
    if args.out:
        check_writable("--out", args.out)


def cmd_train(args: argparse.Namespace) -> None:
    from ridgeline.cifar.train import train

    preset, hp = hparams_from_args(args)
    result = train(hp, preset, seed=args.seed, device=args.device, data=load_data(args),
                   progress=not args.quiet, eval_each_epoch=args.eval_each_epoch,
                   precision=args.precision, compile_mode=args.compile,
                   cuda_graphs=args.cuda_graphs)
    problems: list[str] = []
    if args.out:
        write_or_fallback("--out", args.out, lambda p: write_text(p, result.to_json(indent=2)),
                          problems)
    if result.diverged:
        moment = (f"beta1={hp.beta1:g}, beta2={hp.beta2:g}" if hp.optimizer == "adamw"
                  else f"momentum={hp.momentum:g}")
        print(f"diverged: non-finite loss in epoch {len(result.epochs)} "
              f"({hp.optimizer}: lr={hp.lr:g}, {moment}, weight_decay={hp.weight_decay:g})")
    else:
        print(f"test accuracy {result.test_acc:.2%} | final train loss {result.train_loss:.4f} "
              f"| {result.wall_time:.1f} s | {result.images_per_sec:.0f} img/s "
              f"| {preset.name} seed {args.seed} on {result.device} ({result.precision})")
    if args.json:
        print(json.dumps(result.to_dict()))
    raise_problems(problems)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- diagnose

def check_diagnose(args: argparse.Namespace) -> None:
    need(args, "every", *AT_LEAST_1)
    need(args, "tol", *POSITIVE)
    if not args.from_json:
        hparams_from_args(args)  # a bad value fails here, before training
        need(args, "seed", *SEED)
        if args.out:
            check_writable("--out", args.out)
    check_writable("--plot", args.plot)


def cmd_diagnose(args: argparse.Namespace) -> None:
    from ridgeline.science import diagnose, diagnostics

    problems: list[str] = []
    if args.from_json:
        diag = diagnose.load_diagnostics(args.from_json)
    else:
        from ridgeline.cifar.train import train

        preset, hp = hparams_from_args(args)
        result = train(hp, preset, seed=args.seed, device=args.device, data=load_data(args),
                       hooks=[diagnostics.WeightNormHook(args.every)], progress=not args.quiet,
                       precision=args.precision)
        if args.out:
            write_or_fallback("--out", args.out, lambda p: write_text(p, result.to_json()),
                              problems)
        acc = "diverged" if result.diverged else f"test accuracy {result.test_acc:.2%}"
        print(f"{acc} | {preset.name} seed {args.seed} on {result.device} ({result.precision})")
        diag = result.extras[diagnose.HOOK_NAME]
    print(write_or_fallback("--plot", args.plot,
                            lambda p: diagnose.report(diag, p, args.tol), problems))
    raise_problems(problems)


# ----------------------------------------------------------------------------- sweep

def check_sweep(args: argparse.Namespace) -> None:
    for span in args.span or ():  # wider than any recordable range, and 2**1024 overflows
        if not 0 <= span <= MAX_SPAN:
            raise RidgelineError(f"--span {span!r} is not allowed: it must be a number of "
                                 f"octaves in [0, {MAX_SPAN}]")
    if args.span is None and max(args.steps) > 2 * MAX_SPAN + 1:
        raise RidgelineError(f"--steps {max(args.steps)} without --span would span "
                             f"{(max(args.steps) - 1) / 2:g} octaves each side, more than "
                             f"{MAX_SPAN}: give --span")
    grid_of(args)
    check_executor(args)
    need(args, "stale_after", *SECONDS)


def grid_of(args: argparse.Namespace):
    from ridgeline.landscape.grid import make_grid

    preset, hp = hparams_from_args(args)
    steps = args.steps * 2 if len(args.steps) == 1 else args.steps
    runs = math.prod(steps) * args.seeds  # checked before make_grid lists them all
    if min(*steps, args.seeds) >= 1 and runs > MAX_GRID_RUNS:
        raise RidgelineError(f"--steps {' '.join(map(str, args.steps))} with --seeds "
                             f"{args.seeds} make {runs} runs: at most {MAX_GRID_RUNS} are allowed")
    return preset, make_grid(args.slice, preset.name, hp, tuple(args.steps),
                             None if args.span is None else tuple(args.span), args.seeds)


def cmd_sweep(args: argparse.Namespace) -> None:
    from ridgeline.landscape import sweep

    preset, spec = grid_of(args)
    n_points = len(spec.values[0]) * len(spec.values[1]) * len(spec.seeds)
    print(f"{spec.slice_name} on {preset.name}: {n_points} runs "
          f"({len(spec.values[0])} x {len(spec.values[1])} x {len(spec.seeds)} seeds)")
    for axis, values in zip(spec.axes, spec.values, strict=True):
        print(f"  {axis}: {', '.join(f'{v:g}' for v in values)}")
    if args.dry_run:
        return
    report = sweep.run_sweep(spec, args.storage, args.study, objective_from_args(args),
                             args.workers, progress=not args.quiet, stale_after=args.stale_after,
                             executor=args.executor, ray_address=args.ray_address)
    print(report.summary())
    failed = report.ran.get("failed", 0)
    if failed:
        raise RidgelineError(f"{failed} runs failed (see user attr 'failure' in the study): "
                             f"re-run the same command to retry them")
    if report.workers_lost and report.complete + report.running_elsewhere < report.total:
        raise RidgelineError(f"{report.workers_lost} workers died and the grid is unfinished: "
                             f"re-run the same command to finish it")


# ----------------------------------------------------------------------------- plot

def check_plot(args: argparse.Namespace) -> None:
    need(args, "floor", *POSITIVE)
    check_writable("--out", args.out, folder=True)


def cmd_plot(args: argparse.Namespace) -> None:
    from ridgeline.landscape import plots

    problems: list[str] = []
    out, results = write_or_fallback(
        "--out", args.out, lambda p: (p, plots.plot_all(args.storage, args.study, p, args.floor)),
        problems, folder=True)
    for name, r in results.items():
        best = ", ".join(f"{k}={v:g}" for k, v in r["best"].items() if k != "test_acc")
        fit = r["fit"]
        ridge = "" if fit is None else " | " + plots.RidgeFit(**{
            **fit, "points": []}).describe()
        print(f"{name}: {r['cells_done']}/{r['cells']} cells, best "
              f"{r['best']['test_acc']:.2%} at {best}{ridge} -> {r['png']}")
    print(f"fits: {Path(out, 'fits.json')}")
    raise_problems(problems)


# ----------------------------------------------------------------------------- tune

TUNED = ("lr", "momentum", "weight_decay")


def check_tune(args: argparse.Namespace) -> None:
    start_of(args)
    need(args, "max_evals", *AT_LEAST_1)
    need(args, "replicates", *AT_LEAST_1)
    check_executor(args)
    need(args, "seed", *SEED)
    if args.seed + args.replicates - 1 > SEED_MAX:
        raise RidgelineError(f"--seed={args.seed} with --replicates={args.replicates} is not "
                             f"allowed: the seeds {args.seed}..{args.seed + args.replicates - 1} "
                             f"must lie in [0, {SEED_MAX}]")
    need(args, "min_improvement", *NON_NEGATIVE)
    need(args, "max_level", *AT_LEAST_1)
    need(args, "floor", *POSITIVE)
    check_writable("--out", args.out, folder=True)


def start_of(args: argparse.Namespace):
    """The preset, the start point and the coordinate system of a ``tune`` command."""
    from ridgeline.tuner import tune

    if args.coords and args.invariant:
        raise RidgelineError("--coords and --invariant exclude each other: give one")
    preset, hp = hparams_from_args(args)
    if hp.optimizer == "adamw":
        raise RidgelineError("tune runs Page's SGD coordinates (λα/(1−ρ), 1−ρ, α): --optimizer "
                             "adamw is not supported yet; use FlatDirectionSampler("
                             "invariants='adamw') (docs/adamw.md)")
    start = tune.start_point(hp, args.start, **{k: getattr(args, k) for k in TUNED
                                                 if getattr(args, k) is not None})
    system = tune.coordinate_system(args.coords or "paper", args.invariant or ())
    return preset, start, system


def cmd_tune(args: argparse.Namespace) -> None:
    from ridgeline.tuner import report as tuner_report
    from ridgeline.tuner import tune

    preset, start, system = start_of(args)
    custom = any(getattr(args, k) is not None for k in (*TUNED, "batch_size", "epochs",
                                                         "warmup_epochs"))
    name = args.study or tune.default_study_name(preset.name, "custom" if custom else args.start)
    chosen = tune.DEFAULT.replace(line_search=args.line_search,
                                  min_improvement=args.min_improvement,
                                  max_level=args.max_level)
    print(f"{name}: tuning {', '.join(system.names)} of {preset.name} from "
          f"lr={start.lr:g} momentum={start.momentum:g} weight_decay={start.weight_decay:g} "
          f"({chosen.line_search} line search, threshold {chosen.min_improvement:g}, up to "
          f"{chosen.max_level} seeds on the best, at most {args.max_evals} runs"
          f"{'' if args.no_prune else ', lost runs pruned'})")
    result = tune.tune_preset(
        preset, start, args.storage, name, objective=objective_from_args(args), system=system,
        settings=chosen, replicates=args.replicates, max_evals=args.max_evals, seed=args.seed,
        prune=not args.no_prune, executor=args.executor, workers=args.workers,
        ray_address=args.ray_address,
        on_run=None if args.quiet else tuner_report.Progress(args.max_evals))
    print(tuner_report.markdown_table(result))
    print(tuner_report.summary(result))
    problems: list[str] = []
    paths = write_or_fallback(
        "--out", args.out, lambda p: tuner_report.write_report(
            result, p, name, args.storage, preset.name, args.floor), problems, folder=True)
    print(f"table: {paths['md']}, {paths['csv']}; figure: {paths['png']}")
    raise_problems(problems)


# ----------------------------------------------------------------------------- transfer

TRANSFERRED = {"sgd": ("lr", "momentum", "weight_decay", "batch_size"),
               "adamw": ("lr", "weight_decay", "batch_size", "beta1")}


def check_transfer(args: argparse.Namespace) -> None:
    optimizer = optimizer_of(args)
    parse_setting(args.setting, optimizer)
    names = TRANSFERRED[optimizer]
    unused = [k for k in ("momentum", "beta1") if getattr(args, k) is not None and k not in names]
    if unused:
        raise RidgelineError(f"--{unused[0]} is not a parameter of {optimizer}: with "
                             f"--optimizer {optimizer} change one of "
                             f"{', '.join('--' + n.replace('_', '-') for n in names)}")
    if not changes_of(args):
        raise RidgelineError(f"nothing to transfer: give the new value of one or more of "
                             f"{', '.join('--' + n.replace('_', '-') for n in names)}")


def optimizer_of(args: argparse.Namespace) -> str:
    """``--optimizer``, else the preset's."""
    return args.optimizer or get_preset(args.preset).hparams.optimizer


def changes_of(args: argparse.Namespace) -> dict[str, float]:
    return {k: float(getattr(args, k)) for k in TRANSFERRED[optimizer_of(args)]
            if getattr(args, k) is not None}


def cmd_transfer(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from ridgeline.tuner import transfer

    optimizer = optimizer_of(args)
    hp = get_preset(args.preset).hparams
    point = {**{k: v for k, v in asdict(hp).items() if k in TRANSFERRED[optimizer]},
             **parse_setting(args.setting, optimizer)}
    change = changes_of(args)
    try:
        lines = transfer.describe_transfer(point, change, args.keep, optimizer=optimizer)
    except OverflowError:
        moved = ", ".join(f"{k}={v!r}" for k, v in change.items())
        old = " ".join(f"{k}={point[k]:g}" for k in change)
        raise RidgelineError(f"{moved} is too far from {old}: a re-derived value would pass "
                             f"the float range (about 1.8e308); give nearer values") from None
    print("\n".join(lines))


# ----------------------------------------------------------------------------- reproduce

def check_reproduce(args: argparse.Namespace) -> None:
    from ridgeline.reproduce import plan as planning

    preset = get_preset(args.preset)
    planning.require_sgd(preset.name)
    if not args.report_only:
        planning.parse_budget(args.budget)
    check_executor(args)
    check_writable("--out", args.out or f"reproduce-{preset.name}", folder=True)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from ridgeline.reproduce import pipeline as reproduce
    from ridgeline.reproduce import plan as planning
    from ridgeline.reproduce import report
    from ridgeline.runs import ledger

    preset = get_preset(args.preset)
    out = args.out or f"reproduce-{preset.name}"
    command = reproduce_command(args, out)
    if args.report_only:
        paths = report.write_report(args.storage, preset.name, out, command)
        print(f"report: {paths['html']}, {paths['md']}")
        return
    plan = planning.plan_for(preset.name, planning.parse_budget(args.budget), args.storage)
    print(plan.describe())
    label = ledger.storage_label(args.storage or ledger.default_storage())
    print(f"storage {label}; report in {out}/")
    if args.dry_run:
        return
    # The experiments (diagnostics) train in-process, wherever the other runs go.
    data = load_data(args) if plan.diagnostics else None
    opts = reproduce.Options(objective_from_args(args, data), data, args.device,
                             args.precision, args.executor, args.workers, args.ray_address,
                             not args.quiet)
    result = reproduce.run(plan, args.storage, out, opts, command)
    ran = ", ".join(f"{k} {v}" for k, v in result["ran"].items()) or "none"
    print(f"runs made now: {ran}; report: {result['html']}, {result['md']}")


def reproduce_command(args: argparse.Namespace, out: str) -> str:
    """The command line that makes this report, for the report to quote."""
    import shlex

    words = ["ridgeline", "reproduce", "--preset", args.preset, "--budget", args.budget,
             "--out", out]
    for name in ("storage", "objective", "executor", "workers", "ray_address"):
        if getattr(args, name) is not None:
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return shlex.join(words)


def parse_setting(items: list[str] | None, optimizer: str = "sgd") -> dict[str, float]:
    """``["lr=0.4", "weight-decay=5e-4"]`` → ``{"lr": 0.4, "weight_decay": 0.0005}``; the
    names are those ``transfer`` moves for ``optimizer``."""
    names = TRANSFERRED[optimizer]
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        try:
            if not sep or key not in names:
                raise ValueError
            out[key] = float(value)
        except ValueError:
            raise RidgelineError(f"--from {item!r}: use NAME=VALUE with NAME one of "
                                 f"{', '.join(names)}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ridgeline",
        description="Tune BatchNorm ResNets along the flat directions of hyperparameter space "
                    "(Page, How to train your ResNet 5).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train ResNet-9 once and report test accuracy")
    add_hparam_flags(p)
    add_run_flags(p)
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument("--out", help="write the RunResult JSON here")
    p.add_argument("--eval-each-epoch", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the RunResult as JSON")
    p.add_argument("--compile", metavar="MODE",
                   help="torch.compile the model in this mode (default, max-autotune, ...; "
                        "compiled before the timed loop)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each step's forward and backward as one CUDA graph (CUDA only)")
    p.set_defaults(func=cmd_train, check=check_train)

    p = sub.add_parser("diagnose", help="log ‖w‖ and angular updates of the BN-fed convs and "
                       "check them against the rotational-equilibrium prediction")
    add_hparam_flags(p)
    add_run_flags(p)
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument("--from", dest="from_json", metavar="RUN_JSON",
                   help="read a saved `diagnose --out` RunResult instead of training")
    p.add_argument("--every", type=integer, default=10, help="log every this many steps")
    p.add_argument("--tol", type=number, default=0.1,
                   help="in equilibrium: measured/predicted angle within 1±tol")
    p.add_argument("--plot", default="diagnose.png", help="write the figure (PNG) here")
    p.add_argument("--out", help="write the RunResult JSON (with the log) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_diagnose, check=check_diagnose)

    p = sub.add_parser(
        "sweep", help="run (or resume) a 2-D log2 grid of runs as an Optuna study",
        description="Run every point of a 2-D log2 grid as an Optuna trial; re-running the same "
                    "command resumes it. See docs/landscapes.md. Example: ridgeline sweep "
                    "--slice lr-wd --preset cpu-mini --steps 7 5 --seeds 2 --workers 2")
    add_hparam_flags(p)  # the grid is centred on these values
    add_run_flags(p)
    p.add_argument("--slice", required=True, metavar="A-B",
                   help="lr-batch, lr-momentum, lr-wd (the paper's), or any two of "
                        "lr, batch, momentum, wd (sgd) or beta1 (adamw)")
    p.add_argument("--steps", type=integer, nargs="+", default=[7], metavar="K",
                   help="grid points per axis (one value, or one per axis)")
    p.add_argument("--span", type=number, nargs="+", metavar="S",
                   help="octaves each side of the centre (default (steps-1)/2: factor 2 apart)")
    p.add_argument("--seeds", type=integer, default=1, help="seeds 0..k-1 per grid point")
    add_executor_flags(p)
    p.add_argument("--storage", help="journal file or database URL "
                   "(default: $RIDGELINE_STORAGE or ./ridgeline.journal)")
    p.add_argument("--study", help="study name (default: SLICE-PRESET, e.g. lr-wd-cpu-mini)")
    p.add_argument("--objective", metavar="MODULE:FUNCTION",
                   help="run this instead of training (tests, other models)")
    p.add_argument("--stale-after", type=number, default=600.0, metavar="SECONDS",
                   help="re-run RUNNING points of other hosts silent this long")
    p.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep, check=check_sweep)

    p = sub.add_parser("plot", help="heatmaps, tables and ridge fits of sweep studies")
    p.add_argument("--storage", help="journal file or database URL "
                   "(default: $RIDGELINE_STORAGE or ./ridgeline.journal)")
    p.add_argument("--study", nargs="+", help="study names (default: every sweep study)")
    p.add_argument("--out", default="landscapes", help="output folder")
    p.add_argument("--floor", type=number, default=3.0, metavar="PP",
                   help="colour floor in percentage points below the best cell")
    p.set_defaults(func=cmd_plot, check=check_plot)

    p = sub.add_parser(
        "tune", help="Page's tuner: coordinate descent along the flat directions",
        description="Tune lr, momentum and weight decay by cyclic coordinate descent in "
                    "(λα/(1−ρ), 1−ρ, α); every run is an Optuna trial and re-running the same "
                    "command resumes without repeating a run. See docs/tuner.md. Example: "
                    "ridgeline tune --preset cpu-mini --start bad")
    add_hparam_flags(p)  # --lr/--momentum/--weight-decay override the start; the rest are fixed
    add_run_flags(p)
    p.add_argument("--start", choices=("sensible", "bad"), default="sensible",
                   help="sensible: the preset's values; bad: Page's λ=0.001, ρ=0.5, α=0.01")
    p.add_argument("--coords", choices=("paper", "raw"),
                   help="paper (default): λα/(1−ρ), 1−ρ, α with λ derived; raw: λ, 1−ρ, α")
    p.add_argument("--invariant", action="append", metavar="EXPR",
                   help="tune in this monomial as a coordinate, e.g. 'lr/(1-momentum)' "
                        "(repeatable; the free parameters complete the basis)")
    p.add_argument("--line-search", choices=("accelerate", "double"),
                   help="accelerate (default): steps ×2, ×4, ×16, ... then a parabolic probe; "
                        "double: the paper's ×2 / ÷2")
    p.add_argument("--min-improvement", type=number, metavar="ACC",
                   help="a step must beat the best by more than this (test accuracy as a "
                        "fraction; default 0: noise is handled by re-measuring, --max-level)")
    p.add_argument("--max-level", type=integer, metavar="K",
                   help="when a cycle improves nothing, re-measure the best with one more "
                        "seed and cycle again, up to K seeds (default 8; 1: Page's stop)")
    p.add_argument("--no-prune", action="store_true",
                   help="train every run to the end (default: report each epoch and prune "
                        "clearly lost runs, Optuna's PercentilePruner)")
    p.add_argument("--replicates", type=integer, default=1, help="seeds averaged per point")
    p.add_argument("--max-evals", type=integer, default=40, help="at most this many points")
    p.add_argument("--seed", type=integer, default=0, help="first seed of each point")
    add_executor_flags(p)
    p.add_argument("--storage", help="journal file or database URL "
                   "(default: $RIDGELINE_STORAGE or ./ridgeline.journal)")
    p.add_argument("--study", help="study name (default: tune-PRESET-START, e.g. "
                   "tune-cpu-mini-bad; tune-PRESET-custom with hyperparameter flags)")
    p.add_argument("--objective", metavar="MODULE:FUNCTION",
                   help="run this instead of training (tests, other models), as for sweep")
    p.add_argument("--out", default="tuning", help="folder for the table and the figure")
    p.add_argument("--floor", type=number, default=3.0, metavar="PP",
                   help="heatmap colour floor in percentage points below the best cell")
    p.add_argument("--quiet", action="store_true", help="no line per run")
    p.set_defaults(func=cmd_tune, check=check_tune)

    p = sub.add_parser(
        "transfer", help="move a setting along the flat directions when one value changes",
        description="Apply the change and re-derive the other hyperparameters so the kept "
                    "invariants stay fixed. Example: ridgeline transfer --preset paper "
                    "--batch-size 128")
    p.add_argument("--preset", default="cpu-mini", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--from", dest="setting", nargs="+", metavar="NAME=VALUE",
                   help="the setting, where it differs from the preset's (e.g. lr=0.3)")
    for flag, name in (("--lr", "lr"), ("--momentum", "momentum"),
                       ("--weight-decay", "weight_decay"), ("--batch-size", "batch_size")):
        p.add_argument(flag, type=number, help=f"new {SYMBOLS[name]}")
    p.add_argument("--beta1", type=number, help="new β₁ (adamw only)")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="whose flat directions to keep (default: the preset's): sgd (Page's) "
                        "or adamw (ηλ, measured in docs/adamw.md)")
    p.add_argument("--keep", action="append", metavar="EXPR",
                   help="an invariant to hold, e.g. lr/batch_size (repeatable; default for "
                        "sgd: lr*weight_decay/((1-momentum)*batch_size), which keeps the "
                        "paper's ridge of whatever changes; for adamw: lr*weight_decay)")
    p.set_defaults(func=cmd_transfer, check=check_transfer)

    p = sub.add_parser(
        "reproduce", help="the paper end to end within a budget: landscapes, tuner, "
        "diagnostics, one report",
        description="Run Page's part 5 on this machine: the three landscapes, the tuner from "
                    "the bad and the sensible start, and the flatness experiments, planned to "
                    "fit --budget; then write report.html and report.md. Re-running the same "
                    "command resumes. See docs/reproduce.md. Example: ridgeline reproduce "
                    "--preset cpu-mini --budget 3h")
    p.add_argument("--preset", default="cpu-mini", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--budget", default="3h", metavar="RUNS|DURATION",
                   help="a number of runs (e.g. 120) or a duration (e.g. 3h, 90m); the plan "
                        "fits inside it (default 3h)")
    p.add_argument("--out", metavar="DIR", help="report folder (default reproduce-PRESET)")
    add_run_flags(p)
    add_executor_flags(p)
    p.add_argument("--storage", help="journal file or database URL "
                   "(default: $RIDGELINE_STORAGE or ./ridgeline.journal)")
    p.add_argument("--objective", metavar="MODULE:FUNCTION",
                   help="run this instead of training for landscapes and tuner (tests)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from what the storage holds; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars or lines per run")
    p.set_defaults(func=cmd_reproduce, check=check_reproduce)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check a command line: every input error is raised here, before any data is
    loaded, any storage touched or any output written."""
    args = build_parser().parse_args(argv)
    _one_value_each(args)
    args.check(args)
    return args


def _one_value_each(args: argparse.Namespace) -> None:
    """argparse turns ``--lr=--`` into ``lr=[]`` (it drops a bare ``--``, even as a value):
    a single-valued flag given no value is a usage error, not a list."""
    for name, value in vars(args).items():
        if isinstance(value, list) and not value:
            flag = "--" + name.replace("_", "-")
            raise RidgelineError(f"{flag} was given no value ('--' is not one): give a value")


def run(args: argparse.Namespace) -> None:
    args.func(args)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = parse(argv)
        except SystemExit as e:  # argparse: --help (0) or a usage error, its line printed (2)
            return 0 if e.code is None else e.code
        run(args)
    except RidgelineError as e:
        print(f"ridgeline: error: {e}", file=sys.stderr)
        return 2
    except BrokenExecutor as e:  # a worker process of the tuner was killed (tune, reproduce)
        print(f"ridgeline: error: a worker process died ({str(e).rstrip('.')}); the finished "
              f"runs are in the study: re-run the same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ridgeline: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
