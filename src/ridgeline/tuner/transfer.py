"""``ridgeline transfer``: move a setting to new values along the paper's flat directions.

The changed values and the kept invariants are pinned and the rest re-derived, through a
coordinate system (tuner.invariants) made of them; the answer says, in text, what changed and
which invariant forced it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ridgeline.tuner.invariants import CoordinateSystem
from ridgeline.tuner.monomials import InvariantError, Space, rank

__all__ = ["ADAMW_KEEP", "ADAMW_SPACE", "DEFAULT_KEEP", "OPTIMIZERS", "PAPER_SPACE",
           "describe_transfer", "keepable", "transfer"]

PAPER_SPACE = Space(("lr", "momentum", "weight_decay", "batch_size"), complement=("momentum",))
# AdamW (issue #18): ρ is not a parameter; β₁ enters as 1−β₁ like momentum. lr comes first,
# so it is the one re-derived when weight_decay changes (and weight_decay when lr changes).
ADAMW_SPACE = Space(("lr", "weight_decay", "batch_size", "beta1"), complement=("beta1",))


def transfer(
    point: Mapping[str, float],
    change: Mapping[str, float],
    keep: Sequence[str],
    space: Space = PAPER_SPACE,
) -> tuple[dict, list[str]]:
    """Apply ``change`` and re-derive other parameters so each invariant in ``keep`` is unchanged.

    Rule: the changed parameters and kept invariants are pinned; every other parameter is held
    at its old value, choosing held ones from the *end* of the declaration order (batch_size,
    weight_decay, momentum, lr) and skipping those the pins already determine. What remains — the
    earliest declared, so ``lr`` unless it is itself changed — is adjusted. Returns the new point
    and one reason per changed value. A derived batch_size is left as a float (round it yourself).
    """
    unknown = [k for k in change if k not in space.names]
    if unknown:
        raise InvariantError(f"cannot change {unknown}: declared are {list(space.names)}")
    pins = [*keep, *(f"(1-{k})" if k in space.complement else k for k in change)]
    try:
        system = CoordinateSystem(space, pins)
    except InvariantError as err:
        if "not linearly independent" not in str(err):
            raise
        raise InvariantError(
            f"change {dict(change)} with keep {list(keep)} over-determines the setting: "
            "some kept invariant cannot stay fixed; keep fewer invariants or change fewer values"
        ) from None
    old, moved = system.to_coords(point), system.to_coords({**point, **change})
    coords = {**moved, **{name: old[name] for name in system.names[: len(keep)]}}
    new = {**point, **system.from_coords(coords), **change}
    return new, _reasons(space, point, new, change, keep)


def _reasons(
    space: Space, old: Mapping, new: Mapping, change: Mapping, keep: Sequence[str]
) -> list[str]:
    """One line per changed value: requested, or which kept invariants forced it."""
    requested = ", ".join(f"{k} {_fmt(old[k])} → {_fmt(v)}" for k, v in change.items())
    old_logs = space.base_logs(old)
    lines = []
    for i, name in enumerate(space.names):
        arrow = f"{name} {_fmt(old[name])} → {_fmt(new[name])}"
        if name in change:
            lines.append(f"{arrow}: requested")
        elif not math.isclose(old[name], new[name], rel_tol=1e-12):
            held = [m for m in map(space.parse, keep) if m.exponents[i]]
            why = ", ".join(f"{m.expr} = {math.exp(m.log_value(old_logs)):.2e}" for m in held)
            lines.append(f"{arrow}: keeps {why} as {requested}")
    return lines


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# The paper's three ridges, λ/N, λ/(1−ρ) and λα, are each a flat direction of its own slice
# (the other two parameters fixed). In log coordinates they span the moves that keep this one
# monomial fixed, so keeping it moves along the ridge of whatever changes: λ ∝ N for a batch
# size, λ ∝ 1−ρ for a momentum, λ ∝ 1/α for a weight decay (and 1−ρ ∝ λ for a learning rate).
# Keeping all three ridges' invariants at once would instead move off them (docs/tuner.md).
DEFAULT_KEEP = ("lr*weight_decay/((1-momentum)*batch_size)",)
RIDGES = ("lr/batch_size", "lr/(1-momentum)", "lr*weight_decay")
# AdamW's flat direction in theory: ηλ, the EMA time scale 1/(ηλ) in steps (Wang & Aitchison,
# ICML 2025) and the equilibrium angle √(2ηλ(1−β₁)/(1+β₁)) (Kosson et al., ICML 2024). Not
# measured yet (docs/adamw.md). A batch-size change keeps ηλ, so the time scale in *epochs*
# moves ∝ 1/N; --keep 'lr*weight_decay/batch_size' keeps it in epochs instead (our reading of
# Wang & Aitchison's constant τ_epoch), and neither is Adam's √N lr rule.
ADAMW_KEEP = ("lr*weight_decay",)
# optimizer → (space, default keep, ridges reported as "also unchanged", their name)
OPTIMIZERS = {
    "sgd": (PAPER_SPACE, DEFAULT_KEEP, RIDGES, "the paper's ridges"),
    "adamw": (ADAMW_SPACE, ADAMW_KEEP, ADAMW_KEEP, "AdamW's flat direction"),
}


def keepable(
    change: Mapping[str, float], candidates: Sequence[str] = DEFAULT_KEEP,
    space: Space = PAPER_SPACE,
) -> tuple[list[str], list[str]]:
    """The candidates that can all stay fixed while ``change`` is applied (taken greedily in
    order), and those the change over-determines, e.g. lr/batch_size when both move."""
    pins = [space.parse(f"(1-{k})" if k in space.complement else k).exponents for k in change]
    kept, dropped = [], []
    for expr in candidates:
        rows = [*pins, *(space.parse(e).exponents for e in kept), space.parse(expr).exponents]
        (kept if rank(rows) == len(rows) else dropped).append(expr)
    return kept, dropped


def describe_transfer(
    point: Mapping[str, float], change: Mapping[str, float], keep: Sequence[str] | None = None,
    space: Space | None = None, optimizer: str = "sgd",
) -> list[str]:
    """`ridgeline transfer`'s answer: the old and new settings, the kept invariants, one
    reason per changed value, and which default invariants could not be kept and why.

    ``optimizer`` picks the space, the default invariants and the ridges reported from
    OPTIMIZERS (sgd: Page's; adamw: ηλ); ``space`` overrides its space. ``keep=None`` keeps
    every one of the optimizer's default invariants that the change leaves room for.
    """
    if optimizer not in OPTIMIZERS:
        raise InvariantError(f"optimizer {optimizer!r} is not allowed: it must be one of "
                             f"{', '.join(OPTIMIZERS)}")
    own_space, default_keep, ridges, ridges_name = OPTIMIZERS[optimizer]
    space = space or own_space
    dropped: list[str] = []
    if keep is None:
        keep, dropped = keepable(change, default_keep, space)
    new, reasons = transfer(point, change, keep, space)
    lines = [f"from  {_setting(space, point)}", f"keep  {', '.join(keep) or 'nothing'}",
             f"to    {_setting(space, new)}", *(f"  {r}" for r in reasons)]
    old_logs, new_logs = space.base_logs(point), space.base_logs(new)
    same = [f"{m.expr} = {math.exp(m.log_value(old_logs)):.2e}" for m in map(space.parse, ridges)
            if m.expr not in keep
            and math.isclose(m.log_value(old_logs), m.log_value(new_logs), abs_tol=1e-12)]
    if same:
        lines.append(f"also unchanged ({ridges_name}): {', '.join(same)}")
    if dropped:
        lines.append(f"not kept: {', '.join(dropped)} (the changed values alone fix it)")
    if "batch_size" in new and not math.isclose(new["batch_size"], round(new["batch_size"])):
        lines.append(f"batch_size {_fmt(new['batch_size'])} is not an integer: round it to "
                     f"{max(1, round(new['batch_size']))} (the invariants with batch_size then "
                     f"hold to that rounding)")
    return lines


def _setting(space: Space, point: Mapping[str, float]) -> str:
    return " ".join(f"{n}={_fmt(point[n])}" for n in space.names if n in point)
