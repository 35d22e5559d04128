"""The report's figures: each saved as ``figures/<name>.png`` and ``.svg``.

Drawn on ``matplotlib.figure.Figure`` objects (no pyplot state) with the Agg canvas, except
Optuna's own plots, which use pyplot and are closed right after saving. PNG and SVG carry no
timestamps and the SVG ids a fixed salt, so the same records give the same files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report.collect import Note

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


@dataclass
class Figure:
    name: str  # figures/<name>.png and .svg
    title: str
    caption: str
    png: Path
    svg: Path | None


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    return matplotlib


def new_figure(width: float, height: float) -> Any:
    _mpl()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, folder: Path, name: str, title: str, caption: str, *, svg: bool = True,
         tight: bool = False) -> Figure:
    matplotlib = _mpl()
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    svg_path = folder / f"{name}.svg" if svg else None
    with matplotlib.rc_context({"svg.hashsalt": "bench-report", "svg.fonttype": "path"}):
        box = "tight" if tight else None
        fig.savefig(png, dpi=100, metadata={"Software": None}, bbox_inches=box)
        if svg_path is not None:
            fig.savefig(svg_path, metadata={"Date": None, "Creator": None}, bbox_inches=box)
    import matplotlib.pyplot as plt

    plt.close(fig)  # a no-op for our own figures; frees Optuna's pyplot ones
    return Figure(name, title, caption, png, svg_path)


# ---- one model ------------------------------------------------------------------------------------------


def confusion_figure(cm: np.ndarray, norm: np.ndarray, classes: Sequence[str], folder: Path, name: str,
                     title: str, caption: str) -> Figure:
    k = len(classes)
    side = max(3.2, 0.55 * k + 1.6)
    fig = new_figure(2 * side + 0.6, side)
    axes = fig.subplots(1, 2)
    for ax, values, label in ((axes[0], cm, "count"), (axes[1], norm, "row-normalised")):
        shown = np.nan_to_num(values.astype(float), nan=0.0)
        image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=(shown.max() or 1) if label == "count" else 1)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_xticks(range(k), labels=classes, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
        ax.set_yticks(range(k), labels=classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(label)
        limit = shown.max() / 2 if shown.max() else 0.5
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    text = f"{int(values[i, j])}" if label == "count" else (
                        "-" if not np.isfinite(values[i, j]) else f"{values[i, j]:.2f}")
                    ax.text(j, i, text, ha="center", va="center", fontsize=9,
                            color="white" if shown[i, j] > limit else "black")
    return save(fig, folder, name, title, caption)


@dataclass(frozen=True)
class RocMark:
    """An operating point on a ROC curve: the rates its threshold reached on the plotted split."""

    class_index: int
    specificity: float
    sensitivity: float
    label: str


def roc_figure(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], positive: int | None, folder: Path,
               name: str, title: str, caption: str, marks: Sequence[RocMark] = ()) -> Figure:
    from sklearn.metrics import auc, roc_curve

    fig = new_figure(5.2, 4.4)
    ax = fig.subplots()
    targets = [positive] if positive is not None else list(range(len(classes)))
    for n, c in enumerate(targets):
        truth = y == c
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, proba[:, c])
        label = f"{classes[c]} (AUC {auc(fpr, tpr):.3f})"
        ax.plot(fpr, tpr, color=PALETTE[n % len(PALETTE)], linewidth=1.6, label=label)
        for i, m in enumerate(mk for mk in marks if mk.class_index == c):
            ax.plot(1 - m.specificity, m.sensitivity, linestyle="none", marker="osD^v"[i % 5], markersize=8,
                    markerfacecolor="none", markeredgewidth=1.8, color=PALETTE[n % len(PALETTE)], label=m.label)
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC" + (f": {classes[positive]} vs rest" if positive is not None else ", one-vs-rest"))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, folder, name, title, caption)


def training_curves_figure(history: pd.DataFrame, folder: Path, name: str, title: str, caption: str) -> Figure | None:
    """Loss and accuracy per epoch: train solid, inner validation split dashed, one colour per fold;
    and the learning rate each epoch ran at, with the start of phase 2 of two-phase fine-tuning."""
    metrics = set(history.metric)
    panels = [(m, f"val_{m}") for m in ("loss", "accuracy") if m in metrics]
    if not panels:
        return None
    with_lr = "learning_rate" in metrics
    fig = new_figure(5.0 * len(panels) + (4.0 if with_lr else 0.0), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels) + with_lr))
    if with_lr:
        _learning_rate_panel(axes[-1], history)
    for ax, (train, val) in zip(axes, panels):
        for i, (fold, rows) in enumerate(history.groupby("fold", sort=True)):
            color = PALETTE[i % len(PALETTE)]
            for metric, style in ((train, "-"), (val, "--")):
                r = rows[rows.metric == metric].sort_values("epoch")
                if len(r):
                    ax.plot(r.epoch, r.value, linestyle=style, marker="o", markersize=3, color=color,
                            label=f"fold {int(fold) + 1} {'train' if metric == train else 'inner val'}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(train)
        ax.set_title(train)
        ax.grid(alpha=0.3)
        epochs = sorted(set(history.epoch))
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
    axes[len(panels) - 1].legend(fontsize=7, loc="best")
    return save(fig, folder, name, title, caption)


def _learning_rate_panel(ax: Any, history: pd.DataFrame) -> None:
    for i, (fold, rows) in enumerate(history.groupby("fold", sort=True)):
        r = rows[rows.metric == "learning_rate"].sort_values("epoch")
        ax.plot(r.epoch, r.value, marker="o", markersize=3, color=PALETTE[i % len(PALETTE)], label=f"fold {int(fold) + 1}")
        phase = rows[rows.metric == "phase"].sort_values("epoch")
        second = phase[phase.value >= 2].epoch
        if i == 0 and len(second):
            ax.axvline(second.min() - 0.5, color="#555555", linestyle=":", linewidth=1)
            ax.annotate(" phase 2", (second.min() - 0.5, 1), xycoords=("data", "axes fraction"), va="top", fontsize=7)
    if (history[history.metric == "learning_rate"].value > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (head)")
    ax.set_title("learning rate")
    ax.grid(alpha=0.3)


# ---- the search ----------------------------------------------------------------------------------------------


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _figure_of(result: Any) -> Any:
    ax = np.asarray(result).ravel()[0] if isinstance(result, np.ndarray) else result
    return ax.figure


def optuna_figures(study: Any, folder: Path, prefix: str, label: str) -> tuple[list[Figure], list[Note], dict]:
    """Optuna's history, importances, parallel coordinates and slice plots.

    Returns (figures, notes about skipped plots, importances {param: value}); a plot that failed
    is a problem, one that the study cannot have (too few trials, nothing varies) is not.
    """
    _quiet_optuna()
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    figures: list[Figure] = []
    notes: list[Note] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = sorted({p for t in complete for p in t.params
                      if len({repr(u.params.get(p)) for u in complete}) > 1})
    if not complete:
        return figures, [Note(f"{label}: no completed trial in the Optuna study, so no search plots.")], {}

    def draw(kind: str, title: str, caption: str, fn: Any, size: tuple[float, float]) -> None:
        try:
            with plt.rc_context({"figure.figsize": size}):
                result = fn()
            fig = _figure_of(result)
            fig.set_size_inches(*size)
            # Constrained layout divides by zero on the parallel-coordinate plot's twin axes.
            figures.append(save(fig, folder, f"{prefix}_{kind}", title, caption, tight=True))
        except Exception as err:  # Optuna refuses some studies (e.g. one distinct value): say so
            plt.close("all")
            notes.append(Note(f"{label}: {title.lower()} not drawn ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''})."))

    draw("history", "Optimization history",
         "Each trial's objective value (mean over the CV folds) and the best so far, by trial number.",
         lambda: ov.plot_optimization_history(study), (7.0, 4.0))
    importances: dict[str, float] = {}
    if len(complete) < 2 or not varying:
        notes.append(Note(f"{label}: parameter importances need at least 2 completed trials whose parameters "
                          f"vary; this study has {len(complete)} completed trial(s)"
                          f"{'' if varying else ' with no varying parameter'}.", problem=False))
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
        except Exception as err:
            notes.append(Note(f"{label}: parameter importances not computed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''})."))
        if importances:
            draw("importances", "Parameter importances",
                 "fANOVA importance of each searched parameter for the objective (Optuna, seed 0).",
                 lambda: ov.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)),
                 (6.5, max(2.5, 0.45 * len(importances) + 1.5)))
    if varying:
        draw("parallel", "Parallel coordinates",
             "Each completed trial as a line through its parameter values, coloured by its objective value.",
             lambda: ov.plot_parallel_coordinate(study), (max(8.0, 2.2 * len(varying) + 4), 4.4))
        draw("slice", "Slice plots",
             "The objective against each parameter on its own (colour: trial number).",
             lambda: ov.plot_slice(study), (max(6.0, 4.2 * len(varying) + 1.5), 4.0))
    else:
        notes.append(Note(f"{label}: no parameter varies between the completed trials, so no parallel-coordinate "
                          f"or slice plots.", problem=False))
    return figures, notes, importances


def history_figure(trials: pd.DataFrame, maximize: bool, metric: str, folder: Path, name: str, title: str,
                   caption: str) -> Figure | None:
    """The optimization history from trials.csv (KerasTuner searches, or no study.db at hand)."""
    t = trials[pd.to_numeric(trials.value, errors="coerce").notna()].sort_values("trial")
    if t.empty:
        return None
    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    values = t.value.astype(float).to_numpy()
    done = (t.state == "COMPLETE").to_numpy()
    ax.scatter(t.trial[done], values[done], s=18, color=PALETTE[0], label="complete", zorder=3)
    if (~done).any():
        ax.scatter(t.trial[~done], values[~done], s=18, color="#bbbbbb", label="pruned / other", zorder=2)
    if done.any():
        best = _best_so_far(values[done], maximize)
        ax.step(t.trial[done], best, where="post", color=PALETTE[1], label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, folder, name, title, caption)


def _best_so_far(values: np.ndarray, maximize: bool) -> np.ndarray:
    return np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)


def strategies_figure(curves: list[tuple[str, pd.DataFrame]], maximize: bool, metric: str, folder: Path,
                      name: str, title: str, caption: str) -> Figure | None:
    """Best-so-far against trial number and against elapsed time, one line per study."""
    curves = [(label, c) for label, c in curves if len(c)]
    if len(curves) < 2:
        return None
    fig = new_figure(11.0, 4.0)
    by_trial, by_time = fig.subplots(1, 2)
    for i, (label, c) in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        best = _best_so_far(c.value.to_numpy(dtype=float), maximize)
        by_trial.step(np.arange(1, len(c) + 1), best, where="post", color=color, label=label)
        if c.elapsed.notna().all():
            by_time.step(c.elapsed.to_numpy(dtype=float) / 60, best, where="post", color=color, label=label)
    by_trial.set_xlabel("completed trials")
    by_time.set_xlabel("elapsed minutes (trial end)")
    for ax in (by_trial, by_time):
        ax.set_ylabel(f"best {metric} so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, folder, name, title, caption)


def expected_best_figure(curves: Sequence[tuple[str, Any]], m: int, metric: str, folder: Path, name: str,
                         title: str, caption: str) -> Figure:
    """Each entry's expected best against k trials (``bench.report.expected.Curve``), its bootstrap
    band shaded, and a dotted line at k = m, the equal budget the leaderboard compares at."""
    fig = new_figure(7.0, 4.2)
    ax = fig.subplots()
    for i, (label, c) in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        ax.fill_between(c.k, c.low, c.high, color=color, alpha=0.18, linewidth=0)
        ax.plot(c.k, c.expected, color=color, marker="o", markersize=3, linewidth=1.6,
                label=f"{label} (n = {c.k.size})")
    ax.axvline(m, color="#555555", linestyle=":", linewidth=1)
    ax.annotate(f" k = {m}", (m, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # k counts trials
    ax.set_xlabel("trials k (drawn from the completed trials)")
    ax.set_ylabel(f"expected best {metric} (CV)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save(fig, folder, name, title, caption)


def cd_figure(stats: Any, avg_ranks: pd.Series, n_datasets: int, folder: Path, name: str, title: str,
              caption: str) -> Figure:
    folder.mkdir(parents=True, exist_ok=True)
    svg = folder / f"{name}.svg"
    stats.critical_difference_figure(avg_ranks, n_datasets, svg)
    return Figure(name, title, caption, svg.with_suffix(".png"), svg)


def nan_safe(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan
