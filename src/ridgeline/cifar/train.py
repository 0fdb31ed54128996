"""Train one ResNet-9 on CIFAR-10 and return a JSON-able RunResult.

One function, ``train``, that every other part of ridgeline calls to evaluate a setting. The
schedule, optimiser, precision and divergence handling live here and nowhere else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ridgeline.cifar import augment
from ridgeline.cifar.model import ResNet9, fold_batchnorm
from ridgeline.errors import HParamError, RidgelineError
from ridgeline.hparams import HParams
from ridgeline.presets import Preset, get_preset
from ridgeline.versions import versions

# CIFAR-10 training-set channel statistics on a 0..255 scale (fixed, so runs on subsets or
# synthetic data normalise the same way).
MEAN = (125.307, 122.950, 113.865)
STD = (62.993, 62.089, 66.705)


class TrainHook(Protocol):
    """Opt-in instrumentation (e.g. science.diagnostics). ``result()`` lands in extras[name]."""

    name: str

    def on_train_start(self, model: torch.nn.Module, optimizer, hparams: HParams,
                       total_steps: int) -> None: ...
    def before_step(self, step: int, model: torch.nn.Module, lr: float) -> None: ...
    def after_step(self, step: int, model: torch.nn.Module, lr: float,
                   loss: torch.Tensor) -> None: ...
    def result(self) -> dict: ...
    # Optional (looked up with getattr, so older hooks need not define it):
    # on_epoch_end(epoch, test_acc, train_loss) after each epoch but the last (epoch counts
    # from 1; test_acc is None unless eval_each_epoch). It may raise StopTraining to end the run
    # as finished, or any other exception (e.g. optuna.TrialPruned), which train() lets through.


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a hook's ``on_epoch_end`` to end a run early as a finished run.

    The run's test_acc is ``test_acc`` (e.g. chance for a run stuck at chance), or the model's
    measured accuracy when it is None; ``reason`` lands in extras['run']['stopped'].
    """

    def __init__(self, reason: str, test_acc: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.test_acc = reason, test_acc


@dataclass
class RunResult:
    """Everything a run reports. ``test_acc``/``train_loss`` are None when the run diverged."""

    test_acc: float | None
    train_loss: float | None
    diverged: bool
    epochs: list[dict]
    wall_time: float  # seconds: model build + warm-up + training + evaluation, data load excluded
    train_time: float  # seconds inside the training loops only
    images_per_sec: float
    hparams: dict
    preset: str
    seed: int
    device: str
    precision: str
    versions: dict
    extras: dict = field(default_factory=dict)
    # CPU results depend on torch's thread count (oneDNN's reductions): a run reproduces for
    # a given seed *and* thread count. None in records made before it was kept.
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        return cls(**d)


class Laps:
    """Line timers for a profile of the loop (benchmarks/profile_loop.py): ``lap(phase)`` adds
    the seconds since the previous lap to ``seconds[phase]``, so the phases of an epoch sum to
    its wall time. Exact on a CPU, where every op returns when done; on CUDA it times only the
    host's side (kernel launches are asynchronous)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        t = time.perf_counter()
        self.seconds[phase] += t - self.t
        self.counts[phase] += 1
        self.t = t


def _no_lap(phase: str) -> None:
    pass


_MALLOC_TUNED: bool | None = None
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def keep_freed_memory() -> bool:
    """Trick "malloc thresholds": keep freed CPU tensors in the process instead of handing them
    back to the kernel. Returns whether glibc accepted the setting (False off glibc).

    glibc's malloc serves blocks above its mmap threshold (at most 32 MB, and activations at
    N=512 are bigger) with fresh mmaps, and trims the heap whenever its free top exceeds the
    trim threshold, so every step unmaps its activations and page-faults them back in: on a
    2-core EPYC 57-82k minor faults per N=512 step, about a third of the step in the kernel.
    Raising both thresholds (the MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ tuning, set at
    run time with mallopt) lets the next step reuse the memory: 0 faults per step, 1.4-1.5×
    the step rate. Process-wide and for the rest of the process: its RSS stays at its peak.
    Numerics are unchanged (PyTorch aligns every CPU tensor to 64 bytes either way).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        _MALLOC_TUNED = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _MALLOC_TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
                                     and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                pass
    return _MALLOC_TUNED


def lr_schedule(hp: HParams, steps_per_epoch: int) -> Callable[[int], float]:
    """Piecewise linear 0 → λ (end of warm-up) → 0 (end of training), evaluated per step.

    As in Page's code, step s (0-based) uses the schedule at epoch (s+1)/steps_per_epoch, so the
    first step already has a small positive lr and the last one ends exactly at 0.
    """
    knots_x = [0.0, hp.warmup_epochs, float(hp.epochs)]
    knots_y = [0.0, hp.lr, 0.0]
    if hp.warmup_epochs == 0:
        knots_x, knots_y = knots_x[1:], knots_y[1:]

    def lr_at(step: int) -> float:
        return float(np.interp((step + 1) / steps_per_epoch, knots_x, knots_y))

    return lr_at


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RidgelineError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise RidgelineError(f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RidgelineError(f"device {device!r} requested but CUDA is not available: use cpu")
    return dev


def cpu_has_fast_bf16() -> bool:
    """Whether torch's oneDNN runs bf16 convolutions and matmuls on this CPU.

    oneDNN's bf16 kernels need AVX-512 (BW/VL/DQ) or AVX-512-BF16/AMX. Without them (e.g. an
    AVX2-only Zen 3 EPYC) a bf16 conv under autocast falls back to ``slow_conv2d`` with torch's
    reference bf16 gemm: on a 2-core AVX2 EPYC (2026-12-02) a 1024² bf16 matmul ran at 0.8
    GFLOP/s per core against 43.8 in fp32, and a cpu-mini step took ~9× the CPU time of an fp32
    one. Read from torch's public ``torch.backends.cpu.get_cpu_capability()``: on x86 the
    kernels are there iff it reports AVX512 (which oneDNN's bf16 path needs). Other CPUs, or a
    torch without that call: assume fast, as before.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return True
    return bool(torch.backends.mkldnn.is_available()) and "AVX512" in capability.upper()


def resolve_precision(precision: str, dev: torch.device) -> torch.dtype | None:
    """'auto' is bf16 autocast (CUDA where supported, else fp16; CPU where oneDNN has bf16
    kernels, else fp32: see :func:`cpu_has_fast_bf16`); 'fp32' disables it."""
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        if dev.type == "cpu" and not cpu_has_fast_bf16():
            return None
        return torch.bfloat16
    if precision not in table:
        raise RidgelineError(f"unknown precision {precision!r}: use auto, bf16, fp16 or fp32")
    if precision == "fp16" and dev.type == "cpu":
        raise RidgelineError("precision 'fp16' is CUDA-only: use bf16 or fp32 on cpu")
    return table[precision]


def make_optimizer(model: torch.nn.Module, hp: HParams, groups=None) -> torch.optim.Optimizer:
    """The optimiser of ``hp.optimizer``, built with lr 0 (the loop sets each step's lr).

    - ``"sgd"`` (default): SGD with Nesterov momentum ρ and coupled weight decay α on every
      parameter, as Page.
    - ``"adamw"``: ``torch.optim.AdamW`` with betas (β₁, β₂) and *decoupled* weight decay λ
      (``hp.weight_decay``) on every parameter, in torch's convention: each step first
      multiplies w by (1 − ηₜλ), ηₜ the step's scheduled lr, then takes Adam's step; the
      per-step decay is ηλ, which is why ηλ is AdamW's flat direction (science.theory).
      ``hp.momentum`` is not used: β₁ is AdamW's momentum. eps is torch's default, 1e-8.

    ``groups`` (optional parameter groups) may override weight_decay per group and carry an
    ``lr_scale`` that multiplies the schedule, e.g. for the scale-symmetry experiment.
    """
    params = list(model.parameters()) if groups is None else groups
    if hp.optimizer == "adamw":
        kw = {"lr": 0.0, "betas": (hp.beta1, hp.beta2), "weight_decay": hp.weight_decay}
        try:
            # Trick "fused AdamW", as for SGD: one kernel per parameter; 3.6 → 1.0 ms a step
            # on cpu-mini's net (2-core EPYC under load, best of 5×100 steps). Not bit-identical
            # to torch's default (foreach) loop, but equal to rounding (tests/test_adamw.py).
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
            return torch.optim.AdamW(params, **kw)
    kw = {"lr": 0.0, "momentum": hp.momentum, "nesterov": hp.momentum > 0,
          "weight_decay": hp.weight_decay}
    try:
        # Trick "fused SGD": one kernel per parameter for decay, momentum and update instead of
        # torch's per-parameter Python loop (the CPU default); bit-identical results, and the
        # optimiser's step 0.40 → 0.27 ms on cpu-mini (2-core EPYC, best of 7×100 steps).
        return torch.optim.SGD(params, fused=True, **kw)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.SGD(params, **kw)


def normalise(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return ((images.float() - mean) / std).to(dtype)


EVAL_BATCH = 500  # images per evaluation batch (see evaluate)


def prepare_images(images: torch.Tensor, dev, dtype: torch.dtype,
                   memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """uint8 images → normalised ``dtype`` on ``dev`` in ``memory_format``, for evaluate()."""
    return normalise(images.to(dev), dtype).contiguous(memory_format=memory_format)


@torch.inference_mode()  # trick "inference_mode": no autograd bookkeeping at all (≤ no_grad)
def evaluate(model, images, labels, dev, amp_dtype, batch_size: int = EVAL_BATCH,
             memory_format: torch.memory_format = torch.channels_last,
             fold: bool = False) -> float:
    """Test accuracy over the whole set, in eval mode (BatchNorm running statistics).

    ``fold`` evaluates :func:`fold_batchnorm`'s copy (BN merged into the convs: 1.06× faster
    on a 2-core EPYC, the same predictions up to rounding). train() folds unless it compiled
    the model: a copy of a compiled module would not be the module it compiled.

    ``images`` are uint8 (normalised here, batch by batch) or already :func:`prepare_images`d,
    as train() does once per run (trick "test set prepared once": normalised in the amp dtype
    and laid out in ``memory_format``, so each of a run's evaluations only runs the model).
    Trick "eval batch 500": on a 2-core EPYC, 500 images per batch took 1.16 s for the 10k
    test set against 1.20-1.41 s at 1,000-2,500 (the activations stay in cache). The correct
    count stays on the device until one read at the end.
    """
    was_training = model.training
    net = fold_batchnorm(model) if fold else model.eval()
    correct = torch.zeros((), dtype=torch.long, device=dev)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        if x.dtype == torch.uint8:
            x = prepare_images(x, dev, torch.float32, memory_format)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = net(x)
        correct += (out.argmax(1) == labels[i:i + batch_size].to(dev)).sum()
    model.train(was_training)
    return correct.item() / len(images)


def warm_up(model, opt, pair, labels, test_x, test_y, hp: HParams, dev, amp_dtype,
            memory_format: torch.memory_format, reps: int = 3, fold: bool = False) -> float:
    """Compile and autotune outside the timed loop; returns its seconds.

    ``reps`` forward+backward passes on one training batch of the real shape and ``reps``
    evaluation batches, then the fresh model state is put back (weights, BatchNorm statistics,
    no gradients; the optimiser has not stepped and no generator was drawn from), so the run
    that follows is the one it would have been without the warm-up.
    """
    t = time.perf_counter()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    p = augment.PAD
    x = pair[0, :hp.batch_size, :, p:-p, p:-p].contiguous(memory_format=memory_format)
    y = labels[:hp.batch_size]
    for _ in range(reps):
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
    opt.zero_grad(set_to_none=True)
    n_eval = min(EVAL_BATCH, len(test_y))
    for _ in range(reps):
        evaluate(model, test_x[:n_eval], test_y[:n_eval], dev, amp_dtype,
                 memory_format=memory_format, fold=fold)
    model.load_state_dict(state)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t


class GraphedStep:
    """Trick "CUDA graph of the step" (``train(cuda_graphs=True)``): the forward, loss and
    backward of one batch captured once as a CUDA graph and replayed every step, so a step is
    two copies into static input tensors and one graph launch instead of a few hundred kernel
    launches. The optimiser stays outside the graph (fused SGD: one launch per step, with the
    step's lr as a plain float), as do the hooks and the running loss sum.

    Capture follows torch's recipe: ``reps`` warm-up passes on a side stream (cuDNN algorithm
    choice, autograd's lazy state), then ``torch.cuda.graph`` with the gradients unset, so the
    graph's backward *writes* them (into its own memory pool) on every replay: the loop must no
    longer zero or unset them. The warm-up's BatchNorm statistics are put back afterwards (the
    weights did not change: no optimiser step), so the run is the one it would have been.
    ``out`` and ``loss`` are static: a replay overwrites them.
    """

    def __init__(self, model, opt, scaler, x: torch.Tensor, y: torch.Tensor, dev, amp_dtype,
                 reps: int = 3) -> None:
        self.model, self.dev, self.amp_dtype, self.scaler = model, dev, amp_dtype, scaler
        self.x = x.clone(memory_format=torch.preserve_format)
        self.y = y.clone()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(reps):
                opt.zero_grad(set_to_none=True)
                self._forward_backward()
        torch.cuda.current_stream(dev).wait_stream(side)
        opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out, self.loss = self._forward_backward()
        model.load_state_dict(state)  # copies in place: the graph's tensors stay where they are
        torch.cuda.synchronize(dev)

    def _forward_backward(self):
        # cache_enabled=False: autocast's weight-cast cache must not outlive the capture
        with torch.autocast(self.dev.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None, cache_enabled=False):
            out = self.model(self.x)
        loss = F.cross_entropy(out.float(), self.y)
        self.scaler.scale(loss).backward()
        return out, loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.out, self.loss


def train(
    hparams: HParams | None = None,
    preset: str | Preset = "cpu-mini",
    seed: int = 0,
    device: str | None = "auto",
    data=None,
    data_root=None,
    hooks: Sequence[TrainHook] = (),
    progress: bool = False,
    eval_each_epoch: bool = False,
    precision: str = "auto",
    setup: Callable[[torch.nn.Module], list[dict] | None] | None = None,
    channels_last: bool = True,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    warmup: bool | None = None,
    laps: Laps | None = None,
    sync_every: int | None = None,
    cuda_graphs: bool = False,
) -> RunResult:
    """Train ResNet-9 under ``preset`` (with ``hparams`` overriding its defaults).

    ``data`` is a ridgeline.cifar.data.Cifar10 (tests pass synthetic ones); otherwise it is loaded
    from ``data_root`` / $RIDGELINE_DATA. A non-finite loss ends the run as diverged.
    ``setup(model)``, if given, runs on the fresh model before the optimiser is built; it may
    change the model in place and return parameter groups for :func:`make_optimizer`.
    ``channels_last`` picks the memory format of weights and batches. ``compile_mode`` (e.g.
    'default', 'max-autotune'; None = eager) compiles the model with torch.compile and
    ``compile_backend``. ``warmup`` (default: when compiling) runs :func:`warm_up` first, so
    compilation and autotuning land in extras['run']['warmup_time'], not in train_time;
    extras['run'] also holds eval_time, the final evaluation's seconds, and eval_time_total,
    all evaluations' (each epoch's is in its log entry as eval_seconds). ``laps`` (a
    :class:`Laps`) collects a per-phase profile of the training loop and evaluations.
    ``sync_every`` (default 1 on CPU, 0 on CUDA) is how often, in steps, the loop reads the
    running loss to stop a diverged run; 0 reads it once per epoch, the loop's only host sync.
    ``cuda_graphs`` (CUDA only, opt-in) captures each step's forward and backward as one CUDA
    graph (:class:`GraphedStep`, captured before the timed loop: its seconds are in
    warmup_time); hooks then see the loss as a copy, and ``laps`` counts the whole replay
    (forward, loss, backward) as "forward".
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    hp = hparams or preset.hparams
    dev = resolve_device(device)
    if cuda_graphs and dev.type != "cuda":
        raise RidgelineError(f"cuda_graphs needs a CUDA device, not {dev}")
    amp_dtype = resolve_precision(precision, dev)
    if data is None:
        from ridgeline.cifar.data import load_cifar10

        data = load_cifar10(data_root)
    data = data.subset(preset.train_size)
    n_train = len(data.train_labels)
    if hp.batch_size > n_train:
        raise HParamError(f"batch_size={hp.batch_size} is not allowed: it must be <= the "
                          f"{n_train} training images of preset {preset.name!r}")

    if dev.type == "cpu":
        keep_freed_memory()
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    # Trick "bf16 epoch tensors" (CPU too, not only CUDA): under autocast the model's first op,
    # a conv, casts its input to amp_dtype, so storing the normalised images in amp_dtype
    # gives it the very same values, and the epoch's augmentation moves half the bytes.
    store_dtype = amp_dtype if amp_dtype is not None else torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    pair = augment.mirrored_pair(augment.pad(normalise(data.train_images.to(dev), store_dtype)),
                                 fmt)
    labels = data.train_labels.to(dev)
    test_x = prepare_images(data.test_images, dev, store_dtype, fmt)
    test_y = data.test_labels.to(dev)
    model = ResNet9(preset.width).to(dev, memory_format=fmt)
    opt = make_optimizer(model, hp, setup(model) if setup else None)
    if compile_mode is not None:
        model.compile(backend=compile_backend,
                      mode=compile_mode if compile_backend == "inductor" else None)
    fold = compile_mode is None  # trick "conv-BN folded for evaluation" (see evaluate())
    warmup_time = 0.0
    if (compile_mode is not None) if warmup is None else warmup:
        warmup_time = warm_up(model, opt, pair, labels, test_x, test_y, hp, dev, amp_dtype, fmt,
                              fold=fold)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    steps_per_epoch = n_train // hp.batch_size  # drop_last
    total_steps = steps_per_epoch * hp.epochs
    # Trick "lr table": the schedule (np.interp, ~60 µs a call) evaluated once for every step.
    lr_at = lr_schedule(hp, steps_per_epoch)
    lrs = [lr_at(s) for s in range(total_steps)]
    lr_scales = [g.get("lr_scale", 1.0) for g in opt.param_groups]
    # Trick "divergence without per-step syncs": NaN and inf propagate through the epoch's
    # running loss sum, so one read of that device scalar sees every non-finite loss before it.
    # It is read every `sync_every` steps (0: only at the end of the epoch). On a CPU a read
    # waits for nothing (ops are synchronous; 0.2 µs), so every step, and a diverged run stops
    # at once. On CUDA a read is a host sync that drains the launch queue, so by default only
    # once per epoch: a diverged run finishes that epoch on NaNs (nothing raises) and is
    # recorded as diverged the same way.
    if sync_every is None:
        sync_every = 1 if dev.type == "cpu" else 0
    graphed = None
    if cuda_graphs:
        t_graph = time.perf_counter()
        p = augment.PAD
        graphed = GraphedStep(model, opt, scaler,
                              pair[0, :hp.batch_size, :, p:-p, p:-p].contiguous(memory_format=fmt),
                              labels[:hp.batch_size], dev, amp_dtype)
        warmup_time += time.perf_counter() - t_graph
    for h in hooks:
        h.on_train_start(model, opt, hp, total_steps)

    log: list[dict] = []
    diverged, train_time, eval_total, step, stop = False, 0.0, 0.0, 0, None
    epoch_hooks = [f for h in hooks if (f := getattr(h, "on_epoch_end", None)) is not None]
    bar = tqdm(total=total_steps, disable=not progress, unit="step", dynamic_ncols=True,
               desc=f"{preset.name} seed {seed}")
    lap = laps.lap if laps is not None else _no_lap
    lap("setup")
    for epoch in range(hp.epochs):
        t0 = time.perf_counter()
        lap("other")
        # augment.epoch: the augmentation and the shuffle in one gather (tricks named there)
        x_epoch, y_epoch = augment.epoch(pair, labels, gen, memory_format=fmt)
        loss_sum = torch.zeros((), device=dev)
        # Trick "argmax into a buffer": the step writes its predictions into the epoch's
        # buffer (one op); they are compared with the labels once, at the end of the epoch.
        preds = torch.empty_like(y_epoch)
        lap("augment")
        for b in range(steps_per_epoch):
            batch = slice(b * hp.batch_size, (b + 1) * hp.batch_size)
            x, y = x_epoch[batch], y_epoch[batch]  # views of the shuffled epoch: no copy
            lap("batch")
            lr = lrs[step]
            for g, scale in zip(opt.param_groups, lr_scales, strict=True):
                g["lr"] = lr * scale
            lap("lr")
            for h in hooks:
                h.before_step(step, model, lr)
            lap("hooks")
            if graphed is None:
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = model(x)
                lap("forward")
                loss = F.cross_entropy(out.float(), y)
                lap("loss")
                scaler.scale(loss).backward()
                lap("backward")
            else:  # forward, loss and backward in one replay; the gradients stay the graph's
                out, loss = graphed(x, y)
                lap("forward")
            scaler.step(opt)
            scaler.update()
            lap("optimizer")
            if graphed is None:
                opt.zero_grad(set_to_none=True)
            lap("zero_grad")
            for h in hooks:  # a graph's loss is overwritten by the next replay: hooks get a copy
                h.after_step(step, model, lr, loss.detach() if graphed is None else loss.clone())
            lap("hooks")
            loss_sum += loss.detach()
            torch.argmax(out, 1, out=preds[batch])
            step += 1
            lap("accumulate")
            if sync_every and step % sync_every == 0 and not math.isfinite(loss_sum.item()):
                diverged = True
                break
            lap("host_sync")
            if progress and (step % 10 == 0 or b == steps_per_epoch - 1):
                elapsed = train_time + time.perf_counter() - t0
                bar.set_postfix(lr=f"{lr:.3g}", img_s=f"{step * hp.batch_size / elapsed:.0f}",
                                refresh=False)  # the loss is shown per epoch: no sync here
                bar.update(step - bar.n)
            lap("other")
        n_seen = (b + 1) * hp.batch_size
        # The epoch's host syncs (on CUDA they also wait for its queued work, before the clock)
        mean_loss = loss_sum.item() / (b + 1)
        n_correct = (preds[:n_seen] == y_epoch[:n_seen]).sum().item()
        seconds = time.perf_counter() - t0
        train_time += seconds
        diverged = diverged or not math.isfinite(mean_loss)
        lap("host_sync")
        if progress:
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}",
                            img_s=f"{step * hp.batch_size / train_time:.0f}")
        entry = {"epoch": epoch + 1, "train_loss": mean_loss if not diverged else None,
                 "train_acc": n_correct / n_seen, "lr": lr,
                 "seconds": seconds, "images_per_sec": n_seen / seconds}
        if diverged:
            log.append(entry)
            break
        if eval_each_epoch and epoch + 1 < hp.epochs:
            lap("other")
            t_eval = time.perf_counter()
            entry["test_acc"] = evaluate(model, test_x, test_y, dev, amp_dtype,
                                         memory_format=fmt, fold=fold)
            entry["eval_seconds"] = time.perf_counter() - t_eval
            eval_total += entry["eval_seconds"]
            lap("eval")
        log.append(entry)
        if epoch + 1 < hp.epochs:
            try:
                for on_epoch_end in epoch_hooks:
                    on_epoch_end(epoch + 1, entry.get("test_acc"), mean_loss)
            except StopTraining as e:
                stop = e
                break
    bar.close()

    test_acc, eval_time = None, 0.0
    if stop is not None and stop.test_acc is not None:
        test_acc = log[-1]["test_acc"] = stop.test_acc
    elif not diverged:
        lap("other")
        t_eval = time.perf_counter()
        test_acc = evaluate(model, test_x, test_y, dev, amp_dtype,
                            memory_format=fmt, fold=fold)
        eval_time = time.perf_counter() - t_eval
        eval_total += eval_time
        lap("eval")
        log[-1]["test_acc"] = test_acc
        log[-1]["eval_seconds"] = eval_time
    return RunResult(
        test_acc=test_acc,
        train_loss=None if diverged else log[-1]["train_loss"],
        diverged=diverged,
        epochs=log,
        wall_time=time.perf_counter() - t_start,
        train_time=train_time,
        images_per_sec=step * hp.batch_size / max(train_time, 1e-9),
        hparams=hp.to_dict(),
        preset=preset.name,
        seed=seed,
        device=str(dev),
        precision=str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32",
        versions=versions(),
        extras={"run": {"channels_last": channels_last, "compile_mode": compile_mode,
                        "compile_backend": compile_backend if compile_mode else None,
                        "warmup_time": warmup_time, "eval_time": eval_time,
                        "eval_time_total": eval_total, "sync_every": sync_every,
                        "cuda_graphs": cuda_graphs,
                        "stopped": None if stop is None else stop.reason},
                **{h.name: h.result() for h in hooks}},
        threads=torch.get_num_threads(),
    )
