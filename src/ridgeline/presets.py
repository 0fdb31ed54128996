"""Every preset in one place, with the paper's symbols beside the names.

| name            | symbol | meaning                                   |
|-----------------|--------|-------------------------------------------|
| lr              | λ      | peak learning rate (mean-loss convention) |
| momentum        | ρ      | Nesterov momentum                         |
| weight_decay    | α      | coupled L2 weight decay (adamw: decoupled)|
| batch_size      | N      | images per step                           |
| epochs          |        | passes over the training subset           |
| warmup_epochs   |        | linear warm-up 0 → λ, then linear λ → 0   |
| optimizer       |        | sgd (Page's) or adamw (torch.optim.AdamW) |
| beta1, beta2    | β₁, β₂ | AdamW's moment decays (sgd: unused)       |
| width           |        | channel multiplier of ResNet-9 (1 = paper)|
| train_size      |        | class-stratified training subset (None = 50k) |
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams

SYMBOLS = {"lr": "λ", "momentum": "ρ", "weight_decay": "α", "batch_size": "N"}


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A training set-up. ``noise_std`` and ``run_seconds`` have no defaults: a preset states
    what is known of its noise and cost, or says (None) that its noise is unknown."""

    name: str
    hparams: HParams
    noise_std: float | None  # seed-to-seed std of test accuracy (fraction); None: not measured
    run_seconds: float  # wall-clock seconds per run, for plans made before any run is measured
    width: float = 1.0
    train_size: int | None = None  # None: all 50,000 training images
    description: str = ""
    notes: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        hparams=HParams(lr=0.4, momentum=0.9, weight_decay=5e-4, batch_size=512,
                        epochs=24, warmup_epochs=5),
        noise_std=None,  # not measured here: the tuner's threshold is 0
        run_seconds=80.0,  # Page's 79 s on a V100, rounded up
        width=1.0,
        train_size=None,
        description="Page's DAWNBench ResNet-9: 94% in 24 epochs (79 s on a V100).",
    ),
    # Calibrated on 2 CPU cores (docs/cpu-mini.md): ~1.9k steps so weight decay equilibrates
    # ((1-ρ)/(2λα) ≈ 500 steps), which is what makes the λα ridge visible at this scale.
    "cpu-mini": Preset(
        name="cpu-mini",
        hparams=HParams(lr=0.2, momentum=0.9, weight_decay=5e-4, batch_size=64,
                        epochs=12, warmup_epochs=2.5),
        noise_std=0.0033,  # docs/cpu-mini.md: std of 3 seeds at these defaults, 0.33 pp
        # docs/cpu-mini.md: 78 s (80 s per command) on an idle 2-core EPYC, rounded up to 90
        run_seconds=90.0,
        width=0.25,
        train_size=10_000,
        description="Quarter-width ResNet-9 on 10k images, 12 epochs, N=64: ~75 s on 2 cores.",
    ),
    # Calibrated on the η×λ slice (docs/adamw.md, 7×7 at factor 2, 2026-12-02): the best cell,
    # η = 8e-3·√2, λ = 0.125, 3 seeds 80.07 / 79.90 / 80.20 %. Same network, data, N and
    # schedule as cpu-mini; only the optimiser differs. λ is decoupled, torch's convention
    # (w ← w·(1 − ηₜλ) per step). 1/(ηλ) = 707 steps = 4.5 epochs at peak lr: inside the
    # run, so decay can equilibrate (diagnose: in equilibrium in the decay's middle third).
    # Its neighbour λ = 0.0625 (ηλ halved, 1/(ηλ) = 9 epochs) is level (80.08 ± 0.06 %);
    # from λ ≈ 0.25 down the slice is a plateau in λ, above it accuracy falls along the ηλ
    # ridge. β₁, β₂ are torch's defaults.
    "cpu-mini-adamw": Preset(
        name="cpu-mini-adamw",
        hparams=HParams(lr=0.0113137085, momentum=0.9, weight_decay=0.125, batch_size=64,
                        epochs=12, warmup_epochs=2.5, optimizer="adamw", beta1=0.9,
                        beta2=0.999),
        noise_std=0.0015,  # std of those 3 seeds, 0.15 pp (0.06 pp at λ = 0.0625)
        run_seconds=50.0,  # 45–50 s a run on an idle 2-core EPYC Zen 4 (AVX-512-BF16), bf16
        width=0.25,
        train_size=10_000,
        description="cpu-mini trained with AdamW (η=0.0113, λ=0.125 decoupled, β=(0.9, "
                    "0.999)): 80.06 ± 0.15 % over 3 seeds, ~50 s on 2 cores (docs/adamw.md).",
        notes={"calibrated": True, "source": "η×λ slice, docs/adamw.md (issue #18)"},
    ),
    # For tests and smoke runs only: seconds, not minutes. Not a meaningful objective.
    "tiny": Preset(
        name="tiny",
        hparams=HParams(lr=0.2, momentum=0.9, weight_decay=5e-4, batch_size=32,
                        epochs=2, warmup_epochs=0.5),
        noise_std=None,  # never measured: not a meaningful objective
        run_seconds=2.0,  # a rough figure for a smoke run on 2 cores (the tests plan with it)
        width=0.125,
        train_size=256,
        description="Smoke-test preset: 1/8 width, 256 images, 2 epochs.",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise RidgelineError(
            f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}"
        ) from None
