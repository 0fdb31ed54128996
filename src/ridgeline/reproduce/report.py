"""The report of `ridgeline reproduce`: one self-contained HTML file and a markdown twin.

Everything is read back from the storage, never from the process that ran it, so a report can
be rewritten at any time (``ridgeline reproduce --report-only``) and shows exactly what is
stored: the landscapes through ``plots.load_grid`` on the plan's grids, the tuner by replaying
its search against an in-memory copy of the finished trials (the search is deterministic, so
the replay is the run; a point the storage lacks ends it), and the experiments through a
read-only ``experiments.StudyCache``. A section the plan left out says "not run (budget)"; one
planned but unfinished says so too, instead of failing.

The document is a list of blocks rendered twice: HTML with each figure inlined as a base64 PNG
data URI (one file to mail or open offline), and markdown with the figures as files beside it
(for docs/ and GitHub). The HTML page marks ``document.body.dataset.imagesLoaded`` with
"loaded/total" once the browser has decoded its images, for tests/test_report.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from ridgeline.landscape import plots
from ridgeline.landscape.grid import SLICES
from ridgeline.presets import Preset, get_preset
from ridgeline.reproduce import plan as planning
from ridgeline.runs import ledger
from ridgeline.science import experiments
from ridgeline.tuner import report as tuner_report
from ridgeline.tuner import tune

NOT_RUN = "not run (budget)"
NOT_YET = "not run yet: re-run the same `ridgeline reproduce` command to finish it"
PAPER_URL = "https://myrtle.ai/learn/how-to-train-your-resnet-5-hyperparameters/"
# Page's published numbers for the tuner from the bad start (λ=0.001, ρ=0.5, α=0.01) and the
# sensible one. Only these are quoted; the rest of his table is marked "not reproduced".
PAPER = {"bad_first": "30.6 %", "bad_best": "94.2 %", "bad_runs": "22", "sensible_runs": "< 10"}
NOT_QUOTED = "not reproduced"
FLOOR_PP = 3.0  # heatmap colour floor, as `ridgeline plot`'s default
CAPTIONS = {  # experiments.FIGURES
    "theory_lr_wd.png": "(b) λ×k, α÷k: ‖w‖, λₜ/‖w‖² and the angle per step (dashed: the "
                        "quasi-static prediction)",
    "theory_diagnose_baseline.png": "(b) the preset's own run: angle per layer against the "
                                    "prediction, their ratio (grey: ±10%), ‖w‖ per layer",
    "theory_momentum.png": "(c) ρ in {0.8, 0.9, 0.95} at fixed λ/(1−ρ): ‖w‖, λₜ/‖w‖² and the "
                           "angle per step (dashed: prediction)",
    "theory_symmetry.png": "(a) |Δ training loss| per step of each symmetry partner against "
                           "its baseline (grey: seed 1 against seed 0)",
}


@dataclass
class Doc:
    """Blocks: ("h1"|"h2"|"h3"|"p"|"note"|"pre", text), ("table", id, header, rows) or
    ("img", path, caption). Text may mark `code` with backticks."""

    blocks: list = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the numbers, written as results.json

    def add(self, *block) -> None:
        self.blocks.append(block)


@dataclass
class Context:
    storage: object
    preset: Preset
    figures: Path
    command: str  # shown when no reproduce session recorded its own
    attrs: dict = field(init=False)  # the control study's user attrs
    plan: planning.Plan | None = field(init=False)
    studies: set = field(init=False)

    def __post_init__(self) -> None:
        self.attrs = planning.stored(self.storage, self.preset.name)
        plan = self.attrs.get(planning.PLAN_ATTR)
        self.plan = None if plan is None else planning.Plan.from_dict(plan)
        self.studies = set(ledger.study_names(self.storage))  # read-only: never creates one

    def has_study(self, name: str) -> bool:
        return name in self.studies


def write_report(storage, preset: str, out_dir, command: str = "") -> dict[str, Path]:
    """report.html, report.md (+ figures/) and results.json in ``out_dir``."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    storage = ledger.default_storage() if storage is None else storage
    ctx = Context(storage, get_preset(preset), out / "figures", command)
    doc = Doc()
    for section in (header, plan_section, tuner_section, landscapes_section,
                    diagnostics_section, resources_section):
        section(ctx, doc)
    paths = {"html": out / "report.html", "md": out / "report.md", "json": out / "results.json"}
    paths["html"].write_text(render_html(doc, _title(ctx)))
    paths["md"].write_text(render_markdown(doc, out))
    paths["json"].write_text(json.dumps(doc.data, indent=1, default=str))
    return paths


def _title(ctx: Context) -> str:
    return f"How to train your ResNet, part 5, reproduced: {ctx.preset.name}"


# ----------------------------------------------------------------------------- sections

def header(ctx: Context, doc: Doc) -> None:
    sessions = ctx.attrs.get(planning.SESSIONS_ATTR, [])
    produced = next((s["command"] for s in reversed(sessions) if s.get("command")),
                    ctx.command)
    doc.add("h1", _title(ctx))
    doc.add("p", f"Produced by `{produced or 'ridgeline reproduce'}`; report written "
                 f"{dt.datetime.now().isoformat(timespec='seconds')} from storage "
                 f"`{ledger.storage_label(ctx.storage)}`.")
    doc.add("p", f"Paper: David Page, How to train your ResNet, part 5: Hyperparameters "
                 f"({PAPER_URL}). Preset `{ctx.preset.name}`: {ctx.preset.description}")
    if ctx.preset.name != "paper":
        doc.add("note", f"`{ctx.preset.name}` is a scaled-down proxy: its accuracies are lower "
                        f"than the paper's 94 %, so compare shapes (ridge slopes, runs the "
                        f"tuner needs), not accuracy levels.")
    doc.data["command"] = produced
    doc.data["preset"] = ctx.preset.name


def plan_section(ctx: Context, doc: Doc) -> None:
    doc.add("h2", "Plan")
    if ctx.plan is None:
        doc.add("note", f"No plan stored for {ctx.preset.name}: every section is "
                        f"{NOT_RUN}. Run `ridgeline reproduce --preset {ctx.preset.name}`.")
        return
    doc.add("pre", ctx.plan.describe())
    doc.data["plan"] = ctx.plan.to_dict()


# ----------------------------------------------------------------------------- tuner

def replay_tune(ctx: Context, start: str, max_evals: int):
    """(TuneResult or None when unfinished, the runs the search judged so far)."""
    name = tune.default_study_name(ctx.preset.name, start)
    if not ctx.has_study(name):
        return None, []
    study = ledger.open_study(name, ctx.storage, read_only=True)
    start_hp = tune.start_point(ctx.preset.hparams, start)
    try:
        result = tune.replay(study, start_hp.to_dict(), max_evals=max_evals)
    except tune.TuneError:  # not even the start has finished
        return None, []
    if result.stopped == "unfinished":
        return None, result.history
    return result, result.history


def _partial(runs: list) -> tune.TuneResult:
    """A TuneResult of the runs an unfinished tune has so far (for the table and figure)."""
    best = [r for r in runs if r.accepted][-1]
    return tune.TuneResult(best.params, best.value, best.coords, runs, "unfinished", 0,
                           len(runs), 0)


def _acc(value) -> str:
    return "diverged" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


def _ending(result: tune.TuneResult, cap: int) -> str:
    n = result.n_runs
    return {"converged": f"{n} (converged)",
            "max_evals": f"{n} (stopped at the cap of {cap}: budget)",
            }.get(result.stopped, f"{n} so far (unfinished)")


def tuner_section(ctx: Context, doc: Doc) -> None:
    doc.add("h2", "The tuner: the paper's table beside ours")
    evals = ctx.plan.tune_evals() if ctx.plan else dict.fromkeys(planning.STARTS, 0)
    results, status = {}, {}
    for start, cap in evals.items():
        result, runs = replay_tune(ctx, start, cap) if cap else (None, [])
        results[start] = result or (_partial(runs) if runs else None)
        status[start] = NOT_RUN if not cap else NOT_YET if not runs else ""
    doc.add("table", "paper-table", ["", "Page (paper preset, V100)",
                                     f"ours ({ctx.preset.name})"], _paper_rows(results, status,
                                                                               evals))
    doc.add("p", f"Bad start: λ=0.001, ρ=0.5, α=0.01. Sensible start: the preset's λ, ρ, α. "
                 f"Entries of Page's table not quoted here are marked \"{NOT_QUOTED}\".")
    doc.data["tuner"] = {}
    landscapes = tuner_report.find_landscapes(ctx.storage, ctx.preset.name) \
        if any(results.values()) else {}
    for start, result in results.items():
        _tuner_runs(ctx, doc, start, result, status[start], landscapes)


def _paper_rows(results: dict, status: dict, evals: dict) -> list[list[str]]:
    def ours(start, fn):
        r = results[start]
        return fn(r) if r is not None else status[start]

    return [
        ["bad start: accuracy of run 1", PAPER["bad_first"],
         ours("bad", lambda r: _acc(r.history[0].value))],
        ["bad start: best accuracy", PAPER["bad_best"], ours("bad", lambda r: _acc(r.best_value))],
        ["bad start: runs", PAPER["bad_runs"], ours("bad", lambda r: _ending(r, evals["bad"]))],
        ["bad start: runs 2 to 21", NOT_QUOTED, ours("bad", lambda r: "see the table below")],
        ["sensible start: runs", PAPER["sensible_runs"],
         ours("sensible", lambda r: _ending(r, evals["sensible"]))],
        ["sensible start: best accuracy", NOT_QUOTED,
         ours("sensible", lambda r: _acc(r.best_value))],
    ]


def _tuner_runs(ctx: Context, doc: Doc, start: str, result, status: str, landscapes) -> None:
    doc.add("h3", f"From the {start} start")
    if result is None:
        doc.add("note", status)
        return
    name = tune.default_study_name(ctx.preset.name, start)
    rows = tuner_report.rows(result)
    doc.add("table", f"tune-{start}", list(tuner_report.HEADER),
            tuner_report.table(result, accuracy=_acc, new_best="{} (new best)"))
    png = tuner_report.trajectory_figure(result, ctx.figures / f"{name}.png", landscapes,
                                         title=f"{name}: {len(rows)} runs, best "
                                               f"{_acc(result.best_value)}")
    doc.add("img", png, f"{name}: the path over the (1/α, λ) and (1−ρ, λ) planes, and "
                        f"accuracy per run")
    doc.data["tuner"][start] = {"runs": rows, "stopped": result.stopped,
                                "best": result.best, "best_value": result.best_value}


# ----------------------------------------------------------------------------- landscapes

def landscapes_section(ctx: Context, doc: Doc) -> None:
    doc.add("h2", "Landscapes and their ridges")
    doc.add("p", "Heatmaps of test accuracy with λ vertical and the other hyperparameter's "
                 "ridge coordinate horizontal, so that the paper's flat direction is a line of "
                 "slope +1. Per column the best λ is located by a parabola; the slope is a "
                 "weighted fit with a 95% confidence interval (see docs/landscapes.md).")
    grids = ctx.plan.grids() if ctx.plan else {}
    rows, figures, fits = [], [], {}
    for name in SLICES:
        row, grid, fit = _landscape(ctx, name, grids.get(name))
        rows.append(row)
        fits[name] = None if fit is None else fit.to_dict() | {"agrees": row[5]}
        if grid is not None:
            png = plots.plot_grid(grid, ctx.figures / f"{grid.name}.png", FLOOR_PP, fit)
            figures.append((png, f"{name}: {fit.describe() if fit else 'no ridge fit'}"))
    doc.add("table", "ridge-table", ["slice", "theory", "fitted slope", "95% CI", "fitted rows",
                                     "agrees with +1", "cells done", "best cell"], rows)
    for png, caption in figures:
        doc.add("img", png, caption)
    doc.data["landscapes"] = fits


def _landscape(ctx: Context, name: str, spec):
    """(table row, grid or None, fit or None) of one slice."""
    axis = SLICES[name][1]
    theory = f"λ ∝ {plots.RIDGE_COORD[axis][0]}"
    if spec is None:
        return [name, theory, NOT_RUN, "", "", "", "", ""], None, None
    study_name = spec.default_study_name()
    grid = plots.load_grid(ledger.open_study(study_name, ctx.storage, read_only=True), spec) \
        if ctx.has_study(study_name) else None
    if grid is None or grid.best() is None:
        return [name, theory, NOT_YET, "", "", "", "", ""], None, None
    fit = plots.grid_fit(grid)
    r, c = grid.best()
    done = int(((grid.n + grid.n_diverged) > 0).sum())
    best = (f"{100 * grid.mean[r, c]:.1f} % at λ={grid.col_values[c]:.4g}, "
            f"{axis}={grid.row_values[r]:.4g}")
    return [name, theory, *_fit_cells(fit), f"{done}/{grid.mean.size}", best], grid, fit


def _fit_cells(fit: plots.RidgeFit) -> list[str]:
    """slope, CI, rows, verdict: the verdict is whether the CI contains the theory's slope."""
    if fit.slope is None:
        return ["no fit", "", str(fit.n_points), "undetermined (fewer than 2 fitted rows)"]
    if fit.ci is None:
        return [f"{fit.slope:+.2f}", "", str(fit.n_points),
                "undetermined (no CI with fewer than 3 fitted rows)"]
    lo, hi = fit.ci
    agrees = "yes" if lo <= fit.theory_slope <= hi else "no"
    return [f"{fit.slope:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]", str(fit.n_points), agrees]


# ----------------------------------------------------------------------------- diagnostics

def diagnostics_section(ctx: Context, doc: Doc) -> None:
    doc.add("h2", "Diagnostics: why the landscape is flat")
    doc.add("p", "The flatness experiments of docs/theory.md, run with the weight-norm hook: "
                 "(a) the exact scale symmetry, (b) λ×k with α÷k (λα fixed), (c) ρ varied at "
                 "fixed λ/(1−ρ).")
    summaries = _experiment_summaries(ctx)
    doc.data["diagnostics"] = summaries
    _equilibrium(doc, summaries)
    for kind in ("b", "c"):
        _flat_accuracy(ctx, doc, kind, summaries[kind])
    _symmetry(ctx, doc, summaries["a"])


def _experiment_summaries(ctx: Context) -> dict:
    """Each experiment's summary (figures written), or the reason there is none."""
    planned = ctx.plan.diagnostics if ctx.plan else ()
    name = experiments.study_name(ctx.preset.name)
    cache = experiments.StudyCache(ledger.open_study(name, ctx.storage, read_only=True),
                                   read_only=True) if ctx.has_study(name) else None
    saved = ctx.attrs.get(planning.SETUP_ATTR, {})
    setup = experiments.Setup(ctx.preset, None, ctx.plan.seeds if ctx.plan else 1, **saved)
    out = {}
    for kind in experiments.EXPERIMENTS:
        if kind not in planned:
            out[kind] = NOT_RUN
            continue
        try:
            out[kind] = experiments.run(kind, setup, cache, ctx.figures) if cache else NOT_YET
        except experiments.NotCached:
            out[kind] = NOT_YET
    return out


def _equilibrium(doc: Doc, summaries: dict) -> None:
    """Measured vs predicted angular update: at the end of warm-up, where λₜ is at its peak,
    and the phases of the schedule whose median ratio is within ±10%."""
    doc.add("h3", "Equilibrium check: angular update per step, measured vs predicted")
    rows = []
    for kind in ("b", "c"):
        if isinstance(summaries[kind], str):
            rows.append([experiments.TITLES[kind], summaries[kind], "", "", "", "", ""])
            continue
        for label, s in summaries[kind]["settings"].items():
            seed0, hp = s["seed0"], s["hparams"]
            pred, meas = seed0["predicted_angle_at_peak"], seed0["angle"]["end_of_warmup"]
            phases = [f"{p['phase']} {_ratio(p['median_ratio'])}"
                      + (" (in)" if p["in_equilibrium"] else "") for p in seed0["status"]]
            rows.append([experiments.TITLES[kind], label,
                         f"λ={hp['lr']:.4g}, α={hp['weight_decay']:.4g}, ρ={hp['momentum']:g}",
                         f"{pred:.4g}", f"{meas:.4g}", f"{meas / pred:.2f}", "; ".join(phases)])
    doc.add("table", "equilibrium-table",
            ["experiment", "setting", "hyperparameters", "predicted θ at peak λ (rad)",
             "measured θ, end of warm-up (rad)", "ratio", "median ratio per phase (in: ±10%)"],
            rows)
    doc.add("p", "Prediction: θ = √(2λα·f(ρ)) with torch's Nesterov factor f (docs/theory.md "
                 "§1.4); measured: geometric mean over the BN-fed convs, seed 0.")


def _ratio(x: float) -> str:
    """A phase without a logged step has no median: shown as a dash."""
    return f"{x:.2f}" if math.isfinite(x) else "—"


def _flat_accuracy(ctx: Context, doc: Doc, kind: str, summary) -> None:
    doc.add("h3", f"{experiments.TITLES[kind]}: accuracy along the flat direction")
    if isinstance(summary, str):
        doc.add("note", summary)
        return
    noise = summary["accuracy_vs_noise"]
    se = noise["mean_diff_in_standard_errors"] or {}
    rows = [[label, _mean_std(s), f"{100 * noise['mean_diff_vs_ref'].get(label, math.nan):+.2f}",
             f"{se[label]:+.1f}" if label in se else "n/a (1 seed)"]
            for label, s in summary["settings"].items()]
    doc.add("table", f"flat-{kind}", ["setting", "test accuracy", "Δ vs preset (pp)",
                                      "Δ in standard errors"], rows)
    for fig in experiments.FIGURES[kind]:
        doc.add("img", ctx.figures / fig, CAPTIONS[fig])


def _mean_std(s: dict) -> str:
    if s["mean_acc"] is None:
        return "diverged"
    std = "" if s["std_acc"] is None else f" ± {100 * s['std_acc']:.1f}"
    n = len(s["test_accs"])
    return f"{100 * s['mean_acc']:.1f}{std} % ({n} seed{'s' if n > 1 else ''})"


def _symmetry(ctx: Context, doc: Doc, summary) -> None:
    doc.add("h3", "(a) scale symmetry: w×r, λ×r², α/r² on the convs")
    if isinstance(summary, str):
        doc.add("note", summary)
        return
    rows = [[label, f"{v['max_abs_loss_diff']:.3g}", f"{100 * v['max_abs_test_acc_diff']:.2f}",
             f"{v['max_rel_conv_weight_diff']:.3g}"] for label, v in summary["variants"].items()]
    noise = summary["seed_noise"]
    if noise:
        rows.append(["seed 1 vs seed 0 (noise)", f"{noise['max_abs_loss_diff_seed1_vs_seed0']:.3g}",
                     f"{100 * noise['test_acc_std']:.2f} (std)", ""])
    doc.add("table", "symmetry-table", ["variant vs baseline", "max |Δ loss|",
                                        "max |Δ accuracy| (pp)", "max rel. Δ conv weights"],
            rows)
    fig = experiments.FIGURES["a"][0]
    doc.add("img", ctx.figures / fig, CAPTIONS[fig])


# ----------------------------------------------------------------------------- resources

def resources_section(ctx: Context, doc: Doc) -> None:
    doc.add("h2", "Runs, time, hardware")
    rows = [_usage(ctx, label, studies) for label, studies in _sections(ctx).items()]
    doc.add("table", "runs-table", ["section", "finished runs", "compute time"], rows)
    sessions = ctx.attrs.get(planning.SESSIONS_ATTR, [])
    total = math.fsum(s["seconds"] for s in sessions)
    doc.add("p", f"{len(sessions)} `ridgeline reproduce` session(s), {_hms(total)} of wall "
                 f"time in all.")
    doc.add("table", "sessions-table", ["started", "wall time", "new runs", "host", "CPU",
                                        "cores", "GPU"],
            [[s["started"], _hms(s["seconds"]), str(sum(s["ran"].values())),
              s["machine"]["host"], s["machine"]["cpu"], str(s["machine"]["cores"]),
              s["machine"]["gpu"] or "none"] for s in sessions])
    versions = sessions[-1]["versions"] if sessions else planning.library_versions()
    doc.add("p", "Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    doc.data["resources"] = {"sections": rows, "sessions": sessions, "versions": versions}


def _sections(ctx: Context) -> dict[str, list[str]]:
    p = ctx.preset.name
    return {"landscapes": [f"{name}-{p}" for name in SLICES],
            "tuner": [tune.default_study_name(p, s) for s in planning.STARTS],
            "diagnostics": [experiments.study_name(p)]}


def _usage(ctx: Context, label: str, names: list[str]) -> list[str]:
    """Finished runs and their summed wall time (diagnostics units count their runs)."""
    runs, seconds = 0, 0.0
    for name in names:
        if not ctx.has_study(name):
            continue
        for t in ledger.open_study(name, ctx.storage, read_only=True).get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,)):
            runs += int(t.user_attrs.get("runs", 1))
            seconds += float(t.user_attrs.get("wall_time", t.user_attrs.get("seconds", 0.0)))
    return [label, str(runs) if runs else NOT_RUN, _hms(seconds) if runs else ""]


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ----------------------------------------------------------------------------- rendering

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Doc, out: Path) -> str:
    """Markdown; figures are linked relative to ``out`` (where report.md goes)."""
    parts = []
    for kind, *rest in doc.blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + rest[0])
        elif kind == "p":
            parts.append(rest[0])
        elif kind == "note":
            parts.append(f"*{rest[0]}*")
        elif kind == "pre":
            parts.append(f"```\n{rest[0]}\n```")
        elif kind == "table":
            _, head, rows = rest
            lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|---" * len(head) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            parts.append("\n".join(lines))
        elif kind == "img":
            path, caption = rest
            parts.append(f"![{caption}]({Path(path).relative_to(out).as_posix()})")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eee; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; }
code { background: #f0f0f0; padding: 0 3px; }
.note { color: #a15c00; font-style: italic; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
"""

# Tests read the result with `chromium --dump-dom`: "loaded/total" once every image decoded.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok + "/" + imgs.length;
});
"""


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _png_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(doc: Doc, title: str) -> str:
    """One self-contained page: inline CSS, figures as data URIs, no external resources."""
    body = []
    for kind, *rest in doc.blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind in ("p", "note"):
            cls = ' class="note"' if kind == "note" else ""
            body.append(f"<p{cls}>{_inline(rest[0])}</p>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(rest[0])}</pre>")
        elif kind == "table":
            body.append(_html_table(*rest))
        elif kind == "img":
            path, caption = rest
            body.append(f'<figure><img src="{_png_uri(path)}" alt="{html.escape(caption)}">'
                        f"<figcaption>{_inline(caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")


def _html_table(table_id: str, head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{_inline(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>"
                  for r in rows)
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'
