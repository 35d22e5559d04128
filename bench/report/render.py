"""Assemble the report from a ``Collection`` and write it: Markdown, self-contained HTML, CSV.

``build_report`` turns the records into a list of blocks (headings, paragraphs, notes, tables,
figures, code); ``to_markdown`` and ``to_html`` render the same blocks, so the two documents
always agree. The HTML inlines its CSS and every figure (base64 PNG) and makes no external
request; a tiny inline script records JavaScript errors into the page (``#js-errors``) so a
headless browser can check there were none.

A part of the report that cannot be drawn from the records at hand (a missing file, an
interrupted run, a study Optuna refuses to plot) becomes a visible note in its section rather
than an exception. Such notes are marked as problems (``Report.problems``; ``bench report
--strict`` exits non-zero naming them), unlike notes that only state a fact (a study that
optimised another metric, a search too small for parameter importances). Set
``BENCH_REPORT_STRICT=1`` to let unexpected exceptions through instead (tests do).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import __version__
from bench import metrics as M
from bench.evaluation.grouping import DEFAULT_BY, Grouping
from bench.report import agreement as A
from bench.report import budget as B
from bench.report import cells as C
from bench.report import clinical as RC
from bench.report import details as D
from bench.report import facts as FA
from bench.report import figures as F
from bench.report import probes as P
from bench.report import significance as S
from bench.report import stages as ST
from bench.report import tables as T
from bench.report import transfer as X
from bench.report.cells import Table, slug
from bench.report.collect import Collection, Note, collect, resolve_runs
from bench.report.fixed_cost import cost_lines
from bench.report.figures import Figure
from bench.report.markup import (
    Block,
    Heading,
    NoteBlock,
    Para,
    to_html,
    to_markdown,
)

__all__ = ["Report", "build_report", "load_stats", "print_report", "to_html", "to_markdown", "write_report"]

SECTIONS = {
    "overview": "1. Overview",
    "leaderboard": "2. Leaderboards",
    "cross": "3. Across datasets",
    "significance": "4. Significance",
    "models": "5. Leaderboard models",
    "search": "6. The searches",
    "strategies": "7. Search strategies compared",
    "reproduce": "8. Reproduce",
}


@dataclass
class Report:
    """What ``write_report`` produced."""

    out: Path
    markdown: Path
    html: Path
    tables: list[Table]
    figures: list[Figure]
    notes: list[str]
    collection: Collection
    blocks: list[Block] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """The notes that say a part could not be drawn or a record is missing (what --strict fails on)."""
        return [b.text for b in self.blocks if isinstance(b, NoteBlock) and b.problem]

    @property
    def terminal_tables(self) -> list[Table]:
        return [t for t in self.tables if t.terminal]


def load_stats() -> Any:
    """``bench.report.stats`` if it is there (it is written separately); None otherwise."""
    try:
        from bench.report import stats
    except ImportError:
        return None
    needed = ("paired_corrected_ttest", "friedman", "critical_difference_figure")
    return stats if all(hasattr(stats, n) for n in needed) else None


# How the report names each explanation grid `bench final --explain METHOD` draws (figures/<method>_<entry>.png).
EXPLANATION_CAPTIONS = {
    "gradcam": ("Grad-CAM", "the Grad-CAM heat at the output of the backbone's last block"),
    "lime": ("LIME", "the LIME weight of each superpixel (positive evidence only)"),
    "occlusion": ("occlusion", "the drop in probability when a sliding patch of the image's mean colour covers "
                  "each place"),
}


class Builder:
    def __init__(self, coll: Collection, out: Path, stats: Any = None, by: tuple[str, ...] = DEFAULT_BY) -> None:
        self.coll = coll
        self.by = by
        self.out = out
        self.figdir = out / "figures"
        self.stats = stats
        self.blocks: list[Block] = []
        self.tables: list[Table] = []
        self.figures: list[Figure] = []
        self.problems: list[str] = []
        self._anchors: set[str] = set()

    # ---- blocks ----------------------------------------------------------------------------
    def heading(self, level: int, text: str) -> None:
        anchor = slug(text.lower()).lower()
        base, n = anchor, 2
        while anchor in self._anchors:
            anchor, n = f"{base}-{n}", n + 1
        self._anchors.add(anchor)
        self.blocks.append(Heading(level, text, anchor))

    def para(self, text: str) -> None:
        self.blocks.append(Para(text))

    def note(self, text: str, problem: bool = False) -> None:
        self.blocks.append(NoteBlock(text, problem))

    def problem(self, text: str) -> None:
        self.note(text, problem=True)

    def notes(self, notes: Sequence[Note]) -> None:
        for n in notes:
            self.note(n.text, n.problem)

    def table(self, table: Table | None) -> None:
        if table is None:
            return
        names = {t.name for t in self.tables}
        if table.name in names:  # two studies whose names slug alike
            n = 2
            while f"{table.name}-{n}" in names:
                n += 1
            table.name = f"{table.name}-{n}"
        self.tables.append(table)
        self.blocks.append(table)

    def figure(self, figure: Figure | None) -> None:
        if figure is not None:
            self.figures.append(figure)
            self.blocks.append(figure)

    def guard(self, what: str, fn: Callable[[], None]) -> None:
        """Run one part; an unexpected error becomes a visible note instead of a traceback."""
        try:
            fn()
        except Exception as err:
            if os.environ.get("BENCH_REPORT_STRICT"):
                raise
            first = str(err).splitlines()[0] if str(err) else ""
            message = f"{what} could not be produced: {type(err).__name__}: {first}"
            self.problems.append(message)
            self.problem(message)

    # ---- the sections ------------------------------------------------------------------------
    def build(self) -> list[Block]:
        coll = self.coll
        self.boards = {}
        for d in coll.datasets:
            try:
                self.boards[d] = T.leaderboard(coll, d, self.by)
            except Exception as err:
                if os.environ.get("BENCH_REPORT_STRICT"):
                    raise
                self.problems.append(f"{d}: leaderboard could not be computed: {type(err).__name__}: {err}")
                self.boards[d] = pd.DataFrame()
        self.heading(1, "bench report")
        self.para(f"Generated by bench {__version__} on {time.strftime('%Y-%m-%d %H:%M')} from "
                  f"{len(coll.runs)} run director{'y' if len(coll.runs) == 1 else 'ies'} "
                  f"({', '.join(f'`{r.label}`' for r in coll.runs[:12])}{' ...' if len(coll.runs) > 12 else ''}). "
                  f"Every table says which split and how many images it comes from; CSV files of every table are "
                  f"in `tables/`.")
        if self.by != DEFAULT_BY:
            self.para(f"Rows are grouped by {' and '.join(self.by)} (`bench report --by {','.join(self.by)}`): "
                      f"each leaderboard row, significance test and cross-dataset row is one combination, "
                      f"represented by its best complete trial by cross-validation.")
        self.notes([n for n in coll.notes if n.dataset is None])
        self.guard("The overview", self.overview)
        self.guard("The leaderboards", self.leaderboards)
        self.guard("The cross-dataset table", self.cross)
        if self.stats is not None:
            self.guard("The significance tests", self.significance)
        self.guard("The model sections", self.models)
        self.guard("The search sections", self.searches)
        self.guard("The strategy comparison", self.strategies)
        self.guard("The reproduce table", self.reproduce)
        for text in self.problems:
            if text not in [b.text for b in self.blocks if isinstance(b, NoteBlock)]:
                self.problem(text)
        return self.blocks

    def overview(self) -> None:
        coll = self.coll
        self.heading(2, SECTIONS["overview"])
        for d in coll.datasets:
            self.heading(3, d)
            self.notes(coll.notes_for(d, "overview"))
            for text in FA.split_warnings(coll, d):
                self.note(text)  # a policy the user chose: a fact, not a problem
            self.guard(f"{d}: the dataset table", lambda d=d: self.table(T.dataset_overview(coll, d)))
            self.guard(f"{d}: the runs table", lambda d=d: self.table(T.runs_overview(coll, d)))

    def leaderboards(self) -> None:
        coll = self.coll
        self.heading(2, SECTIONS["leaderboard"])
        for d in coll.datasets:
            self.heading(3, d)
            for name, make in (("probes", P.probes_table), ("stages", ST.stages_table)):
                self.guard(f"{d}: the {name} table", lambda d=d, make=make: self.table(make(coll, d)))
            board = self.boards.get(d, pd.DataFrame())
            if board.empty and P.probe_only(coll, d):
                continue  # `bench probe` alone: its table is this dataset's leaderboard
            if board.empty:
                states = FA.trials_of(coll, d)
                counts = states.state.value_counts().to_dict() if not states.empty else {}
                what = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "no finished trials"
                self.problem(f"No completed trial on {d} ({what}), so there is no leaderboard. Runs: "
                             f"{', '.join(r.label + ' (' + r.status + ')' for r in coll.runs_of(d))}.")
                continue
            self.table(T.leaderboard_table(coll, d, board, self.by))
            self.notes(T.leaderboard_notes(coll, d, board, self.by))
            self.guard(f"{d}: CV against the held-out set", lambda d=d, b=board: A.agreement_section(self, d, b))
            self.guard(f"{d}: the expected best at equal budget", lambda d=d, b=board: B.expected_section(self, d, b))
            self.guard(f"{d}: the test table",
                       lambda d=d, board=board: self.table(T.test_metrics_table(coll, d, board, self.by)))
            self.guard(f"{d}: the variants table",
                       lambda d=d, board=board: self.table(X.variants_table(coll, d, board)))
            self.guard(f"{d}: the external validation", lambda d=d, board=board: self.external(d, board))
            self.guard(f"{d}: the published baselines", lambda d=d, board=board: self.literature(d, board))

    def external(self, d: str, board: pd.DataFrame) -> None:
        """`bench evaluate`'s results beside the CV and held-out numbers of the same models."""
        tables = X.external_tables(self.coll, d, board)
        if tables:
            self.heading(4, f"{d}: External validation")
            for table in tables:
                self.table(table)

    def literature(self, d: str, board: pd.DataFrame) -> None:
        """Published results beside bench's held-out ones, for a dataset whose entry names a baseline table."""
        from bench.report.baselines import baselines_section

        section = baselines_section(self.coll, d, board)
        if section is None:
            return
        table, paragraphs, notes = section
        self.table(table)
        for text in paragraphs:
            self.para(text)
        for text in notes:
            self.note(text)

    def cross(self) -> None:
        self.heading(2, SECTIONS["cross"])
        self.cross_table = T.cross_dataset(self.coll, self.boards, self.by)
        if self.cross_table is None:
            self.note("No dataset has a completed trial yet.", problem=any(r.kind != "probe" for r in self.coll.runs))
            return
        self.table(self.cross_table)
        if len(self.coll.datasets) == 1:
            self.para("One dataset so far: run other datasets into the same runs folder to compare across them.")

    def significance(self) -> None:
        coll, stats = self.coll, self.stats
        self.heading(2, SECTIONS["significance"])
        for d in coll.datasets:
            board = self.boards.get(d, pd.DataFrame())
            self.heading(3, d)
            if board.empty:
                self.note(f"No completed trial on {d}: nothing to test.")
                continue
            result = S.ttest_table(coll, d, board, stats, by=self.by)
            if isinstance(result, str):
                self.note(result)
            else:
                self.table(result)
        self.heading(3, "Across datasets")
        cross = getattr(self, "cross_table", None)
        if cross is None:
            self.note("No cross-dataset table, so no Friedman test.")
            return
        table, res, message = S.friedman_table(coll, cross, stats, by=self.by)
        if table is None:
            self.note(message)
            return
        self.table(table)
        self.figure(F.cd_figure(stats, res["avg_ranks"], res["n_datasets"], self.figdir, "cd_diagram",
                                "Critical difference diagram", S.cd_caption(self.by)))

    def models(self) -> None:
        coll = self.coll
        self.heading(2, SECTIONS["models"])
        self.para("For each leaderboard model: its confusion matrix, per-class scores and ROC curves on the held-out "
                  "test predictions when `bench final` has run, otherwise on the out-of-fold predictions of its "
                  "cross-validation (each image predicted by the fold model that did not train on it); and its "
                  "training curves per fold.")
        for d in coll.datasets:
            board = self.boards.get(d, pd.DataFrame())
            for row in board.itertuples(index=False):
                self.heading(3, f"{d}: {row.key} ({row.study} #{row.trial})")
                self.guard(f"{d} / {row.key}", lambda d=d, row=row: self.model(d, row))

    def model(self, d: str, row: Any) -> None:
        coll = self.coll
        ev = D.model_eval(coll, d, row)
        name = slug(d, row.key)  # the backbone when rows are by backbone: the figure names as always
        if isinstance(ev, str):
            self.problem(f"No confusion matrix or ROC curve for {row.key}: {ev}.")
        else:
            self.para(f"Evaluated on: **{ev.phrase}**" + (" (the held-out test set)." if ev.source == "test" else
                      " (no held-out evaluation yet)."))
            conf = D.confusion_table(ev)
            self.table(conf)
            cm = M.confusion(ev.y, ev.proba, len(ev.classes))
            self.figure(F.confusion_figure(cm, M.normalize_rows(cm), ev.classes, self.figdir, f"confusion_{name}",
                                           f"{row.key}: confusion matrix",
                                           f"Counts and row-normalised; {ev.phrase}."))
            self.table(D.per_class(ev))
            marks = RC.roc_marks(coll, d, row, "test" if ev.source == "test" else "cv")
            self.figure(F.roc_figure(ev.y, ev.proba, ev.classes, ev.positive, self.figdir, f"roc_{name}",
                                     f"{row.key}: ROC",
                                     f"ROC curve{'s (one-vs-rest)' if ev.positive is None else ''}; {ev.phrase}."
                                     + (" Open markers: the operating points (thresholds chosen on CV)." if marks else ""),
                                     marks=marks))
            if ev.source == "test":
                self.gradcam(d, row, name)
        self.guard(f"{d} / {row.key}: calibration and operating points",
                   lambda: self.clinical(d, row, name))
        hist = coll.history
        if not hist.empty:
            hist = hist[(hist.dataset == d) & (hist.study == row.study) & (hist.trial == row.trial)]
        fig = None
        if len(hist):
            fig = F.training_curves_figure(hist, self.figdir, f"curves_{name}", f"{row.key}: training curves",
                                           f"Loss and accuracy per epoch of each cross-validation fold of trial "
                                           f"{row.trial}: training (solid) and the inner validation split that early "
                                           f"stopping and LR reduction read (dashed; the scored fold is predicted "
                                           f"once, after training); and the learning rate each epoch ran "
                                           f"at (the head's; the backbone's is backbone_lr_scale times it).")
        if fig is None:
            self.problem(f"No training curves for {row.key}: history.csv has no rows for trial {row.trial} "
                         f"of {row.study}.")
        self.figure(fig)

    def clinical(self, d: str, row: Any, name: str) -> None:
        """Calibration (ECE, Brier before and after temperature scaling, reliability diagram) and
        operating points; both only once `bench final` has run."""
        table = RC.calibration_table(self.coll, d, row)
        missing = RC.missing_sections(self.coll, d, row)  # recorded by `bench final` but not found: a problem
        if table is None and not missing:
            self.note(f"No calibration for {row.key}: no `bench final` of trial {row.study} #{row.trial} yet.")
        self.table(table)
        self.figure(RC.reliability_figure(self.coll, d, row, self.figdir, f"reliability_{name}"))
        self.table(RC.operating_table(self.coll, d, row))
        for text in missing:
            self.problem(text)

    def gradcam(self, d: str, row: Any, name: str) -> None:
        # `bench final` draws the grids (it has the model); the report only shows the files.
        hit = FA.entry_rows(self.coll.finals, d, row)
        drawn = [f for f in hit.explanations if f] if "explanations" in hit else []
        if not drawn:
            self.problem(f"No Grad-CAM grid for {row.key}: its run directory has no figures/gradcam_"
                         f"{hit.entry.iloc[0] if len(hit) else row.backbone}.png (made by `bench final`; run it "
                         f"again to draw one).")
            return
        for method, source in sorted(drawn[0].items()):
            title, how = EXPLANATION_CAPTIONS.get(method, (method, f"the {method} attribution"))
            png = self.figdir / f"{method}_{name}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, png)
            self.figure(Figure(f"{method}_{name}", f"{row.key}: {title} on held-out images",
                               "Per true class (rows): the most confidently correct and the most confidently wrong "
                               f"held-out test predictions, each overlaid with {how} of the class the model "
                               "predicted.", png, None))

    def searches(self) -> None:
        coll = self.coll
        self.heading(2, SECTIONS["search"])
        for d in coll.datasets:
            for study in coll.studies(d):
                runs = coll.runs_of(d, study)
                if all(r.kind in ("cv", "probe") for r in runs):
                    continue
                self.heading(3, f"{d}: study {study}")
                first = runs[0]
                self.para(f"Engine {first.engine}, {first.strategy}; objective {first.objective['metric']} "
                          f"({first.objective.get('direction', 'maximize')}); run director"
                          f"{'y' if len(runs) == 1 else 'ies'} {', '.join('`' + r.label + '`' for r in runs)}.")
                self.guard(f"{d} / {study}: the search",
                           lambda d=d, study=study, runs=runs: self.search(d, study, runs))

    def search(self, d: str, study_name: str, runs: list) -> None:
        coll = self.coll
        trials = FA.trials_of(coll, d, study_name)
        if trials.empty:
            self.problem(f"No finished trials recorded for study {study_name} (trials.csv missing or empty).")
        else:
            self.table(D.trials_table(coll, d, study_name))
        studies = [(r, FA.coll_study(coll, r)) for r in runs if r.engine == "optuna"]
        studies = [(r, s) for r, s in studies if s is not None]
        labels = tuple(f"{r.label}:" for r in runs)
        self.notes([n for n in coll.notes_for(d, "search") if n.text.startswith(labels)])
        if not coll.folds.empty:
            for line in cost_lines(coll.folds[(coll.folds.dataset == d) & (coll.folds.study == study_name)]):
                self.para(line)
        prefix = slug(d, study_name)
        objective = runs[0].objective
        if studies:
            # Copies of one study.db: the one that knows most trials.
            run, study = max(studies, key=lambda rs: len(rs[1].get_trials(deepcopy=False)))
            label = f"{study_name}"
            figs, notes, importances = F.optuna_figures(study, self.figdir, prefix, label)
            if len(runs) > 1:
                self.para(f"Optuna's plots use the study database of `{run.label}` "
                          f"({len(study.get_trials(deepcopy=False))} trials).")
            self.notes(notes)
            for fig in figs:
                self.figure(fig)
                if fig.name.endswith("_importances") and importances:
                    self.table(D.importances_table(d, study_name, importances))
        else:
            unopened = runs[0].engine != "kerastuner" and any("study" in r.present for r in runs)
            why = ("KerasTuner search: Optuna's importance, parallel-coordinate and slice plots need an Optuna study"
                   if runs[0].engine == "kerastuner" else
                   "the study database could not be opened: importance, parallel-coordinate and slice plots are "
                   "left out" if unopened else
                   "no study.db in the run director" + ("y" if len(runs) == 1 else "ies") +
                   " (the study lives in another storage): importance, parallel-coordinate and slice plots "
                   "are left out")
            self.note(f"{why[0].upper()}{why[1:]}; the history below is drawn from trials.csv.", problem=unopened)
            if not trials.empty:
                self.figure(F.history_figure(
                    trials, objective.get("direction", "maximize") == "maximize", objective["metric"], self.figdir,
                    f"{prefix}_history", "Optimization history",
                    "Each trial's objective value (mean over the CV folds) and the best so far."))

    def strategies(self) -> None:
        coll = self.coll
        wanted = []
        for d in coll.datasets:
            searches = [s for s in coll.studies(d) if any(r.kind == "search" for r in coll.runs_of(d, s))]
            kinds = {(coll.runs_of(d, s)[0].engine, coll.runs_of(d, s)[0].strategy) for s in searches}
            if len(searches) >= 2 and len(kinds) >= 2:
                wanted.append((d, searches))
        if not wanted:
            return
        self.heading(2, SECTIONS["strategies"])
        for d, searches in wanted:
            self.heading(3, d)
            self.guard(f"{d}: the strategy comparison", lambda d=d, s=searches: self.strategy(d, s))

    def strategy(self, d: str, searches: list[str]) -> None:
        coll = self.coll
        objective = coll.objective(d)
        maximize = objective.get("direction", "maximize") == "maximize"
        curves, rows = [], []
        for s in searches:
            run = coll.runs_of(d, s)[0]
            frame = FA.progress(coll, d, s)
            label = f"{s} ({run.engine}/{run.strategy})"
            curves.append((label, frame))
            if len(frame):
                values = frame.value.to_numpy(dtype=float)
                best_i = int(np.nanargmax(values) if maximize else np.nanargmin(values))
                rows.append({"dataset": d, "study": s, "engine": run.engine, "strategy": run.strategy,
                             "complete_trials": len(frame), "best": float(values[best_i]),
                             "best_trial": int(frame.trial.iloc[best_i]), "trials_to_best": best_i + 1,
                             "minutes_to_best": float(frame.elapsed.iloc[best_i]) / 60,
                             "minutes_total": float(frame.elapsed.iloc[-1]) / 60})
        self.figure(F.strategies_figure(
            curves, maximize, objective["metric"], self.figdir, f"strategies_{slug(d)}",
            f"{d}: search strategies",
            f"Best {objective['metric']} so far (CV mean over folds, {FA.cv_phrase(coll, d)}) against the number of "
            f"completed trials and against elapsed time (Optuna's trial timestamps, or the running sum of trial "
            f"durations where there is no study database)."))
        if rows:
            data = pd.DataFrame(rows)
            display = pd.DataFrame({"study": data.study, "search": data.engine + " / " + data.strategy,
                                    "complete trials": data.complete_trials.astype(str),
                                    f"best {objective['metric']}": [C.f3(x) for x in data.best],
                                    "best trial": [f"#{a}, after {b} complete" for a, b in
                                                   zip(data.best_trial, data.trials_to_best)],
                                    "minutes to best": [f"{x:.1f}" for x in data.minutes_to_best],
                                    "minutes in total": [f"{x:.1f}" for x in data.minutes_total]})
            bold = C.best_mask(data, display, {f"best {objective['metric']}": ("best", "max" if maximize else "min")})
            self.table(Table(slug("strategies", d), f"{d}: strategies at a glance",
                             f"Complete trials only; {FA.cv_phrase(coll, d)}.", data, display, bold))

    def reproduce(self) -> None:
        table = D.reproduce_table(self.coll, self.boards, self.by)
        if table is None:
            return
        self.heading(2, SECTIONS["reproduce"])
        self.table(table)




# ---- writing -----------------------------------------------------------------------------------------------


def _clean(folder: Path, suffixes: tuple[str, ...]) -> None:
    """Remove what an earlier report wrote there (only our file types), so nothing stale remains."""
    if folder.is_dir():
        for f in folder.iterdir():
            if f.is_file() and f.suffix in suffixes:
                f.unlink()


def write_tables(tables: Sequence[Table], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t in tables:
        data = t.data.copy()
        for c in data.columns:  # lists (fold sizes) and dicts as JSON text, same every time
            if data[c].map(lambda v: isinstance(v, list | dict)).any():
                data[c] = data[c].map(lambda v: v if not isinstance(v, list | dict) else str(v))
        data.to_csv(folder / f"{t.name}.csv", index=False, lineterminator="\n")


def write_report(paths: Sequence[Path] | None = None, out: Path = Path("reports"), *, runs_dir: Path | None = None,
                 default_runs_dir: Path | None = None, root: Path | None = None,
                 by: tuple[str, ...] = DEFAULT_BY) -> Report:
    """Collect the runs and write ``out/index.md``, ``out/index.html``, ``tables/*.csv``, ``figures/*``;
    leaderboard rows per backbone, or per combination of the ``by`` parameters."""
    from bench import paths as bench_paths

    found, found_root = resolve_runs(paths, runs_dir, default_runs_dir or bench_paths.runs_dir())
    coll = collect(found, root or found_root)
    if by != DEFAULT_BY:  # by backbone always works, even on runs with no finished trial
        Grouping(by).check(T.searched_parameters(coll), ", ".join(str(p) for p in found))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out / "tables", (".csv",))
    _clean(out / "figures", (".png", ".svg"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight-layout and similar cosmetic matplotlib warnings
        builder = Builder(coll, out, load_stats(), by)
        blocks = builder.build()
    write_tables(builder.tables, out / "tables")
    md = out / "index.md"
    md.write_text(to_markdown(blocks))
    page = out / "index.html"
    page.write_text(to_html(blocks))
    notes = [b.text for b in blocks if isinstance(b, NoteBlock)]
    return Report(out, md, page, builder.tables, builder.figures, notes, coll, blocks)


def print_report(console: Any, report: Report) -> None:
    """The main tables (overview of runs, leaderboards, cross-dataset) in the terminal."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    for t in report.terminal_tables:
        if t.display.empty:
            continue
        table = RichTable(title=escape(t.title), title_justify="left", caption=escape(t.caption),
                          caption_justify="left")
        for c in t.display.columns:
            table.add_column(escape(str(c)), overflow="fold")
        for i in range(len(t.display)):
            table.add_row(*[f"[bold]{escape(str(v))}[/]" if t.bold.iat[i, j] else escape(str(v))
                            for j, v in enumerate(t.display.iloc[i])])
        console.print(table)
    for text in report.notes:
        console.print(f"[yellow]note:[/] {escape(text)}", highlight=False)
    console.print(f"report: {report.html} ({len(report.tables)} tables in {report.out / 'tables'}, "
                  f"{len(report.figures)} figures in {report.out / 'figures'}); Markdown: {report.markdown}")


def build_report(coll: Collection, out: Path,
                 by: tuple[str, ...] = DEFAULT_BY) -> tuple[list[Block], list[Table], list[Figure]]:
    """The blocks of a report on ``coll`` (figures are saved under ``out/figures``)."""
    builder = Builder(coll, Path(out), load_stats(), by)
    return builder.build(), builder.tables, builder.figures

