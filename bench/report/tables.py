"""The report's tables, computed from a ``Collection``.

Each builder returns a ``Table``: ``data`` is the numeric frame written to ``tables/<name>.csv``
(deterministic: sorted rows, no timestamps), ``display`` the formatted strings shown in
Markdown, HTML and the terminal, ``bold`` marks the best value of a column. Every caption
says which split the numbers come from and how many images.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

import numpy as np
import pandas as pd

from bench.evaluation.grouping import DEFAULT_BY, Grouping
from bench.report import agreement
from bench.report import budget as B
from bench.report.cells import (
    LABELS,
    STATES,
    Table,
    best_mask,
    ci,
    count,
    higher_is_better,
    isnan,
    millions,
    pm,
    seconds,
    slug,
)
from bench.report.collect import (
    KEY_METRICS,
    Collection,
    Note,
    Run,
)
from bench.report.facts import (
    coll_study,
    cv_phrase,
    entry_trials,
    entry_rows,
    factors_by_key,
    identity,
    params_of,
    resampled,
    run_path,
    split_facts,
    split_removals,
    test_phrase,
    trial_rows,
    trials_of,
)

# ---- 1. overview -------------------------------------------------------------------------------------------


def dataset_overview(coll: Collection, dataset: str) -> Table:
    man = coll.manifest(dataset)
    ds = man.get("dataset") or {}
    sp = split_facts(coll, dataset)
    classes = ds.get("classes") or []
    per_class = ds.get("per_class") or {}
    skipped = ds.get("skipped") or []
    rows = [
        ("title", ds.get("title", "")),
        ("classes", f"{len(classes)}: " + ", ".join(map(str, classes))),
        ("images per class", ", ".join(f"{c} {count(per_class.get(c))}" for c in classes) or "-"),
        ("images", count(ds.get("images"))),
        ("patients / groups", count(ds.get("groups"))),
        ("split rule", sp["rule"] or "-"),
        ("removed by the split", split_removals(sp)),
        ("cross-validation", f"{sp['folds']} folds" + (f" ({sp['folds_from']})" if sp["folds_from"] else "") + f" on {count(sp['cv_images'])} images ({count(sp['cv_groups'])} "
                             f"groups); fold sizes {', '.join(map(str, sp['fold_sizes'] or [])) or '-'}"),
        ("held-out test", f"{count(sp['test_images'])} images ({count(sp['test_groups'])} groups)"),
        ("exact duplicates found", count(ds.get("duplicates"))),
        ("identical images with different labels", _conflicts(ds.get("label_conflicts") or [])),
        ("passed over (links, names)", str(len(ds.get("passed_over") or []))),
        ("skipped (unreadable) files", str(len(skipped)) + (": " + ", ".join(map(str, skipped[:5])) +
                                                          (" ..." if len(skipped) > 5 else "") if skipped else "")),
        ("licence", ds.get("license") or "-"),
        ("citation", ds.get("citation") or "-"),
    ]
    data = pd.DataFrame(rows, columns=["field", "value"])
    return Table(slug("overview", dataset), f"{dataset}: the data",
                 f"From the run manifests of {dataset}; the held-out test set is never used by the search.",
                 data, data.copy())


def _conflicts(conflicts: list[dict[str, list[str]]]) -> str:
    """How many sets of identical images carry different labels, and the first few of them."""
    if not conflicts:
        return "0"
    shown = "; ".join(" = ".join(f"{p} ({c})" for p, c in zip(x["paths"], x["labels"])) for x in conflicts[:3])
    return f"{len(conflicts)}: {shown}" + (" ..." if len(conflicts) > 3 else "")


def _versions(env: dict[str, Any]) -> str:
    versions = env.get("versions") or {}
    keep = ("keras", env.get("backend"), "tensorflow", "torch", "jax", "optuna", "keras-tuner", "scikit-learn", "numpy")
    return ", ".join(f"{k} {versions[k]}" for k in dict.fromkeys(keep) if k and k in versions)


def _study_span(coll: Collection, run: Run) -> float:
    """Seconds from the first trial's start to the last trial's end, from the Optuna study."""
    study = coll_study(coll, run)
    if study is None:
        return math.nan
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else math.nan




def runs_overview(coll: Collection, dataset: str) -> Table:
    rows = []
    trials = trials_of(coll, dataset)
    for run in coll.runs_of(dataset):
        env = run.manifest.get("environment") or {}
        mine = trials[trials.run == run.label] if not trials.empty else trials
        states = mine.state.value_counts().to_dict() if not mine.empty else {}
        wall = run.manifest.get("seconds")
        if wall is None and run.kind == "search":
            wall = _study_span(coll, run)
        rows.append({
            "run": run.label, "study": run.study, "kind": run.kind, "engine": run.engine, "strategy": run.strategy,
            "status": run.status, **{s.lower(): int(states.get(s, 0)) for s in STATES},
            "wall_seconds": wall if wall is not None else math.nan,
            "trial_seconds": float(pd.to_numeric(mine.seconds, errors="coerce").sum())
            if "seconds" in mine else math.nan,
            "backend": env.get("backend", "-"), "device": env.get("device", "-"),
            "gpus": ", ".join(env.get("gpus") or []) or "-", "precision": env.get("mixed_precision", "-"),
            "python": env.get("python", "-"), "versions": _versions(env),
        })
    data = pd.DataFrame(rows)
    display = pd.DataFrame({
        "run": data.run, "study": data.study, "search": data.engine + " / " + data.strategy, "status": data.status,
        "trials (complete / pruned / failed / other)": [
            f"{r.complete} / {r.pruned} / {r.fail} / {r.running + r.interrupted}" for r in data.itertuples()],
        "wall time": [seconds(x) for x in data.wall_seconds],
        "trial time (sum)": [seconds(x) for x in data.trial_seconds],
        "backend / device": data.backend + " / " + data.device + np.where(data.gpus != "-", " (" + data.gpus + ")", ""),
        "versions": data.versions,
    })
    return Table(slug("runs", dataset), f"{dataset}: runs and search budget",
                 "Wall time: from the manifest (bench cv) or from the first trial's start to the last trial's end "
                 "(Optuna study); trial time sums each trial's own seconds.", data, display, terminal=True)


# ---- 2. leaderboard ----------------------------------------------------------------------------------------


def searched_parameters(coll: Collection) -> set[str]:
    """Every parameter named in the trials' configurations (what ``--by`` can group by)."""
    trials = coll.trials
    if trials.empty:
        return set()
    return {"backbone"} | {k for _, r in trials.iterrows() for k in params_of(r)}


def leaderboard(coll: Collection, dataset: str, by: tuple[str, ...] = DEFAULT_BY) -> pd.DataFrame:
    """One row per backbone (per combination of the ``by`` parameters): its best COMPLETE trial by
    the dataset's objective (CV mean), best first. ``key`` names the row ("resnet50 · imagenet")."""
    grouping = Grouping(by)
    objective = coll.objective(dataset)
    metric, maximize = objective["metric"], objective.get("direction", "maximize") == "maximize"
    factors = [n for n in grouping.by if n != "backbone"]
    cols = ["dataset", "rank", "key", "entry", *factors, "backbone", "study", "run", "trial"]
    frame = entry_trials(coll, dataset, grouping)
    if frame.empty:
        return pd.DataFrame(columns=cols)
    # Among equally good trials prefer one with a held-out result, then the first study and trial.
    tm = coll.test_metrics
    tested = set() if tm.empty else {(s, str(b), int(t)) for s, b, t in
                                     tm[tm.dataset == dataset][["study", "backbone", "trial"]].itertuples(index=False)}
    frame["_tested"] = [(r.study, r.backbone, r.trial) in tested for r in frame.itertuples(index=False)]
    frame = frame.sort_values(["objective_value", "_tested", "study", "trial"],
                              ascending=[not maximize, False, True, True], kind="stable").drop(columns="_tested")
    members = {k: set(zip(g.study, g.trial)) for k, g in frame.groupby("key")}
    best = frame.drop_duplicates("key", keep="first").reset_index(drop=True)
    best.insert(1, "rank", np.arange(1, len(best) + 1))

    # Cost: parameters, seconds per epoch and images/s, averaged over the folds that finished.
    extra = []
    for r in best.itertuples(index=False):
        folds = trial_rows(coll.folds, dataset, r.study, r.trial)
        ok = folds[folds.status == "ok"] if "status" in folds else folds
        num = lambda c: pd.to_numeric(ok[c], errors="coerce") if c in ok else pd.Series(dtype=float)  # noqa: E731
        extra.append({
            "folds": split_facts(coll, dataset)["folds"],
            "cv_images": int(num("n_val").sum()) if len(num("n_val")) else split_facts(coll, dataset)["cv_images"],
            "total_params": num("total_params").iloc[0] if len(num("total_params")) else math.nan,
            "trainable_params": num("trainable_params").iloc[0] if len(num("trainable_params")) else math.nan,
            "seconds_per_epoch": float(num("seconds_per_epoch").mean()) if len(num("seconds_per_epoch")) else math.nan,
            "images_per_second": float(num("images_per_second").mean()) if len(num("images_per_second")) else math.nan,
            **_test_values(coll, dataset, r.study, r.backbone, r.trial, metric,
                           None if grouping.is_default else members[r.key]),
        })
    best = pd.concat([best, pd.DataFrame(extra)], axis=1)
    budgets = _entry_budgets(trials_of(coll, dataset), grouping)
    for column in ("trials_complete", "trials_pruned", "trials_failed", "trial_seconds"):
        best[column] = [budgets.get(k, {}).get(column, 0) for k in best.key]
    # Each entry's expected best at the smallest number of scored trials: the comparison at equal budget.
    budget = B.equal_budget(frame, B.pruned_by_entry(coll, dataset, grouping), maximize)
    best = best.merge(budget[["key", "expected_k", "expected_best"]], on="key", how="left")
    order = [*cols, "folds", "folds_scored", "cv_images", "objective_value", "trials_complete", "trials_pruned",
             "trials_failed", "trial_seconds", "expected_k", "expected_best"]
    order += [c for c in best.columns if c.startswith("cv_") and c not in order]
    order += [c for c in best.columns if c not in order]
    return best[order]


def _entry_budgets(trials: pd.DataFrame, grouping: Grouping) -> dict[str, dict[str, float]]:
    """Per entry, every trial it drew (all studies of the dataset): complete / pruned / failed and the
    trial-seconds spent. A row that won on 30 trials against one that had 2 is not a fair win."""
    out: dict[str, dict[str, float]] = {}
    names = {"COMPLETE": "trials_complete", "PRUNED": "trials_pruned", "FAIL": "trials_failed"}
    # A trial copied into two machines' run directories is one trial.
    for t in trials.drop_duplicates(["study", "trial"], keep="last").itertuples(index=False):
        key = grouping.label({**params_of(t), "backbone": str(t.backbone)})
        row = out.setdefault(key, {"trials_complete": 0, "trials_pruned": 0, "trials_failed": 0,
                                   "trial_seconds": 0.0})
        if t.state in names:
            row[names[t.state]] += 1
        spent = pd.to_numeric(getattr(t, "seconds", math.nan), errors="coerce")
        if not isnan(spent):
            row["trial_seconds"] += float(spent)
    return out


def allocation_phrase(coll: Collection, dataset: str) -> str:
    """How the searches shared their trials among the entries (``bench run --allocation``)."""
    used: dict[str, list[str]] = {}
    for run in coll.runs_of(dataset):
        if run.kind != "search":
            continue
        sessions = run.manifest.get("sessions") or [{}]
        kinds = dict.fromkeys(str(x.get("allocation", "sampler (not recorded)")) for x in sessions)
        plan = run.manifest.get("time_limit")
        if plan:  # a --time-limit plan balances within a stage, and fine-tunes only the promoted backbones
            kinds = {f"staged (--time-limit; fine-tuning for {', '.join(plan.get('promoted') or ['none'])})": None}
        used.setdefault(" then ".join(kinds), []).append(run.study)
    if not used:
        return ""
    what = "; ".join(f"{a} ({', '.join(sorted(set(studies)))})" if len(used) > 1 else a
                     for a, studies in used.items())
    if set(used) == {"balanced"}:
        return f"Allocation of trials to entries: {what} — every entry drew the same number of trials (±1)."
    if all(a.startswith("staged") for a in used):
        return (f"Allocation of trials to entries: {what} — equal trials per backbone within each stage, but only "
                "the promoted backbones were fine-tuned: the trials column and the stages table say what each drew.")
    return (f"Allocation of trials to entries: {what} — the search chose how many trials each entry drew: compare "
            "the trials column before the ranks.")


def _test_values(coll: Collection, dataset: str, study: str, backbone: str, trial: int, metric: str,
                 members: set[tuple[str, int]] | None = None) -> dict:
    """The held-out result of this trial; ``members``: the (study, trial)s of the row's combination
    (grouped by several factors), so a result of another combination is not named as this one's."""
    out = {"test_value": math.nan, "test_low": math.nan, "test_high": math.nan, "test_images": math.nan,
           "test_units": math.nan, "test_unit": None, "test_of": ""}
    tm = coll.test_metrics
    if tm.empty:
        return out
    rows = tm[(tm.dataset == dataset) & (tm.backbone.astype(str) == backbone)]
    if members is not None:
        rows = rows[[(s, int(t)) in members for s, t in zip(rows.study, rows.trial)]]
    if rows.empty:
        return out
    exact = rows[(rows.study == study) & (rows.trial == trial)]
    if exact.empty:  # a held-out result of another trial of this backbone: say so, do not show it as this one's
        out["test_of"] = "; ".join(sorted({f"{s} #{int(t)}" for s, t in zip(rows.study, rows.trial)}))
        return out
    row = exact[exact.metric == metric]
    if row.empty:
        return out
    r = row.iloc[0]
    out.update(test_value=float(r.value), test_low=float(r.get("low", math.nan)),
               test_high=float(r.get("high", math.nan)), test_images=r.get("n_images", math.nan),
               test_units=r.get("n_units", math.nan), test_unit=r.get("unit"))
    return out


def leaderboard_notes(coll: Collection, dataset: str, board: pd.DataFrame,
                      by: tuple[str, ...] = DEFAULT_BY) -> list[Note]:
    """What the leaderboard lacks (problems: a held-out value or metrics missing) and how it ranks."""
    notes = []
    metric = coll.objective(dataset)["metric"]

    def add(text: str, problem: bool = True) -> None:
        notes.append(Note(text, dataset, "leaderboard", problem))

    # An entry whose every trial was pruned or failed has no row: its budget must not vanish with it.
    trials = trials_of(coll, dataset)
    ranked = set(board.key) if "key" in board else set()
    for key, b in ({} if trials.empty else _entry_budgets(trials, Grouping(by))).items():
        if key not in ranked:
            add(f"{key}: not ranked, no complete trial ({b['trials_complete']} complete / {b['trials_pruned']} "
                f"pruned / {b['trials_failed']} failed, {seconds(b['trial_seconds'])}).", problem=False)

    for r in board.itertuples(index=False):
        if r.test_of:
            add(f"{r.key}: the held-out result on record is of {r.test_of}, not of the leaderboard's "
                f"best trial {r.study} #{r.trial} (the search went on after `bench final`, or another "
                f"study did better); run `bench final --run {shlex.quote(str(run_path(coll, r.run)))}` "
                f"for a test value of this one.")
        elif isnan(r.test_value) and not board.test_value.isna().all():
            add(f"{r.key}: no held-out result for trial {r.study} #{r.trial}.")
        if r.folds_scored == 0 and not isnan(r.objective_value):
            add(f"{r.key}: no per-fold metrics (metrics.csv) for trial {r.trial} of {r.study}: the "
                f"{metric} shown is the search's recorded value; the other metrics are not available.")
    if not board.empty and board.test_value.isna().all() and not any(board.test_of):
        add("No held-out test results yet: `bench final --run DIR` refits each backbone's best trial on "
            "all CV images and scores it once on the held-out test set (see Reproduce).")
    studies = {r.study: r.objective for r in coll.runs_of(dataset)}
    other = sorted({f"{s} ({o['metric']})" for s, o in studies.items() if o["metric"] != metric})
    if other:
        add(f"Ranked by {metric}; these studies optimised another metric: {', '.join(other)}.", problem=False)
    return notes




def leaderboard_table(coll: Collection, dataset: str, board: pd.DataFrame,
                      by: tuple[str, ...] = DEFAULT_BY) -> Table:
    grouping = Grouping(by)
    objective = coll.objective(dataset)
    metric = objective["metric"]
    maximize = objective.get("direction", "maximize") == "maximize"
    metrics = list(dict.fromkeys((metric, *KEY_METRICS)))
    n_cv = split_facts(coll, dataset)["cv_images"]
    n_test = board.test_images.dropna().iloc[0] if "test_images" in board and board.test_images.notna().any() \
        else split_facts(coll, dataset)["test_images"]
    verdicts = agreement.flags(board, metric, maximize) if not board.empty else {}
    display = pd.DataFrame({
        "#": board["rank"].astype(str), grouping.title: board.key,
        "trial": [f"{r.study} #{r.trial}" if board.study.nunique() > 1 else f"#{r.trial}"
                  for r in board.itertuples()],
        **{f"{LABELS.get(m, m)}{' (objective)' if m == metric else ''}":
           [pm(a, b) for a, b in zip(board[f"cv_{m}_mean"], board[f"cv_{m}_std"])] for m in metrics},
        "trials (complete / pruned / failed)": [f"{a} / {b} / {c}" for a, b, c in
                                                zip(board.trials_complete, board.trials_pruned, board.trials_failed)],
        B.column_title(board): [f"{x:.3f}" for x in board.expected_best],
        f"test {LABELS.get(metric, metric)} [95% CI]": [ci(a, b, c) for a, b, c in
                                                      zip(board.test_value, board.test_low, board.test_high)],
        # Flagged where the held-out set disagrees with CV (bench.report.agreement, the table below).
        "held-out vs CV": [verdicts.get(k, "-") for k in board.key],
        "params (trainable)": [f"{millions(a)} ({millions(b)})" for a, b in
                               zip(board.total_params, board.trainable_params)],
        "s/epoch": [f"{x:.2f}" if not isnan(x) else "-" for x in board.seconds_per_epoch],
        "images/s": [f"{x:.1f}" if not isnan(x) else "-" for x in board.images_per_second],
        "trial time": [seconds(x) for x in board.trial_seconds],
    }) if not board.empty else pd.DataFrame()
    rules: dict[str, tuple[str, str]] = {}
    for m in metrics:
        label = f"{LABELS.get(m, m)}{' (objective)' if m == metric else ''}"
        rules[label] = (f"cv_{m}_mean", "max" if (maximize if m == metric else higher_is_better(m)) else "min")
    if not board.empty:
        rules[B.column_title(board)] = ("expected_best", "max" if maximize else "min")
    rules[f"test {LABELS.get(metric, metric)} [95% CI]"] = ("test_value", "max" if maximize else "min")
    rules["params (trainable)"] = ("total_params", "min")
    rules["s/epoch"] = ("seconds_per_epoch", "min")
    rules["images/s"] = ("images_per_second", "max")
    bold = best_mask(board, display, rules) if not board.empty else None
    caption = (f"Cross-validation: mean ± std over the validation folds ({cv_phrase(coll, dataset, images=n_cv)}), "
               f"{_rows_phrase(grouping)} best complete trial by {metric}. Test column: {test_phrase(n_test)}, "
               f"95% CI by "
               f"{_board_resampled(board)}; the test set was used once, after the search. Best per column in bold. "
               f"s/epoch and images/s: training, mean over folds. Trials: every trial of the entry in the "
               f"search, trial time their sum. {allocation_phrase(coll, dataset)}"
               + (f" {B.caption(board, metric)}" if not board.empty else ""))
    return Table(slug("leaderboard", dataset), f"{dataset}: leaderboard", caption, board, display, bold,
                 terminal=True)


def _rows_phrase(grouping: Grouping) -> str:
    """Which factor(s) the rows are grouped by, as the caption says it."""
    if grouping.is_default:
        return "each backbone's"
    return (f"rows grouped by {', '.join(grouping.by)} (`--by {','.join(grouping.by)}`): each "
            f"{grouping.noun}'s")


def _board_resampled(board: pd.DataFrame) -> str:
    if board.empty or "test_units" not in board:
        return "bootstrap"
    return resampled(board.test_units, board.test_unit, board.test_images)


def held_out_rows(coll: Collection, dataset: str, r: Any) -> pd.DataFrame:
    """The held-out test metrics of one leaderboard row (its study, backbone and trial)."""
    return entry_rows(coll.test_metrics, dataset, r)




def test_metrics_table(coll: Collection, dataset: str, board: pd.DataFrame,
                       by: tuple[str, ...] = DEFAULT_BY) -> Table | None:
    """Every metric on the held-out test set, with its CI, for the leaderboard's models."""
    tm = coll.test_metrics
    if tm.empty or board.empty:
        return None
    rows = []
    for r in board.itertuples(index=False):
        sub = held_out_rows(coll, dataset, r)
        if sub.empty:
            continue
        row: dict[str, Any] = {"dataset": dataset, "rank": r.rank, **identity(r), "study": r.study,
                               "trial": r.trial}
        for m in KEY_METRICS:
            x = sub[sub.metric == m]
            row[m] = float(x.value.iloc[0]) if len(x) else math.nan
            row[f"{m}_low"] = float(x.low.iloc[0]) if len(x) and "low" in x else math.nan
            row[f"{m}_high"] = float(x.high.iloc[0]) if len(x) and "high" in x else math.nan
        row["n_images"] = int(sub.n_images.iloc[0]) if "n_images" in sub and len(sub) else math.nan
        row["n_boot"] = int(sub.n_boot.min()) if "n_boot" in sub and len(sub) else math.nan
        row["n_units"] = int(sub.n_units.iloc[0]) if "n_units" in sub and len(sub) else math.nan
        row["unit"] = str(sub.unit.iloc[0]) if "unit" in sub and len(sub) else None
        rows.append(row)
    if not rows:
        return None
    data = pd.DataFrame(rows)
    display = pd.DataFrame({"#": data["rank"].astype(str), Grouping(by).title: data.key,
                            **{LABELS[m]: [ci(a, b, c) for a, b, c in zip(data[m], data[f"{m}_low"],
                                                                         data[f"{m}_high"])] for m in KEY_METRICS}})
    bold = best_mask(data, display, {LABELS[m]: (m, "max" if higher_is_better(m) else "min") for m in KEY_METRICS})
    n = data.n_images.dropna()
    n_cv = count(split_facts(coll, dataset)["cv_images"])
    over = resampled(data.n_units, data.unit, data.n_images)
    caption = (f"{test_phrase(n.iloc[0] if len(n) else None)}: each model refit on the {n_cv} "
               f"CV images (less the inner split its early stopping and LR reduction read, as in CV) and "
               f"scored once; [95% CI] from a stratified {over} "
               f"({count(data.n_boot.min())} resamples). Best per column in bold.")
    return Table(slug("test", dataset), f"{dataset}: held-out test, all metrics", caption, data, display, bold)


# ---- 3. across datasets ------------------------------------------------------------------------------------


def cross_dataset(coll: Collection, boards: dict[str, pd.DataFrame],
                  by: tuple[str, ...] = DEFAULT_BY) -> Table | None:
    """Backbones (combinations of ``by``) x datasets: the objective on test (CV where no test ran),
    mean rank per row."""
    grouping = Grouping(by)
    datasets = [d for d in sorted(boards) if not boards[d].empty]
    if not datasets:
        return None
    backbones = sorted({b for d in datasets for b in boards[d].key})
    values = pd.DataFrame(index=backbones, columns=datasets, dtype=float)
    source = pd.DataFrame("", index=backbones, columns=datasets)
    ranks = pd.DataFrame(index=backbones, columns=datasets, dtype=float)
    for d in datasets:
        b = boards[d].set_index("key")
        maximize = coll.objective(d).get("direction", "maximize") == "maximize"
        for name, r in b.iterrows():
            test = not isnan(r.test_value)
            values.loc[name, d] = r.test_value if test else r.objective_value
            source.loc[name, d] = "test" if test else "cv"
        ranks[d] = values[d].rank(ascending=not maximize, method="average")
    mean_rank = ranks.mean(axis=1)
    order = sorted(backbones, key=lambda b: (isnan(mean_rank[b]), mean_rank[b], b))
    data = pd.DataFrame({grouping.title: order})
    # One column per factor beside the label (--by), so the table groups by "weights" without parsing it.
    factors = {} if grouping.is_default else {n: v for d in datasets for n, v in
                                              factors_by_key(boards[d]).items()}
    for name in dict.fromkeys(n for values in factors.values() for n in values):
        data[name] = [factors.get(b, {}).get(name) for b in order]
    display = pd.DataFrame({grouping.title: order})
    rules = {}
    for d in datasets:
        metric = coll.objective(d)["metric"]
        data[d] = [values.loc[b, d] for b in order]
        data[f"{d}_source"] = [source.loc[b, d] or "-" for b in order]
        data[f"{d}_rank"] = [ranks.loc[b, d] for b in order]
        col = f"{d} ({LABELS.get(metric, metric)})"
        display[col] = [("-" if isnan(values.loc[b, d]) else
                         f"{values.loc[b, d]:.3f}" + (" (CV)" if source.loc[b, d] == "cv" else "")) for b in order]
        maximize = coll.objective(d).get("direction", "maximize") == "maximize"
        rules[col] = (d, "max" if maximize else "min")
    data["mean_rank"] = [mean_rank[b] for b in order]
    data["datasets"] = [int(ranks.loc[b].notna().sum()) for b in order]
    display["mean rank"] = [f"{x:.2f}" if not isnan(x) else "-" for x in data.mean_rank]
    display["datasets"] = data.datasets.astype(str)
    rules["mean rank"] = ("mean_rank", "min")
    bold = best_mask(data, display, rules)
    sizes = "; ".join(f"{d}: {test_phrase(split_facts(coll, d)['test_images'])}, {cv_phrase(coll, d)}"
                      for d in datasets)
    caption = ("Each dataset's objective on its held-out test set; (CV) marks a cross-validation mean where no "
               f"held-out evaluation ran yet. Mean rank over the datasets a {grouping.noun} was run on (1 = best). "
               f"Best per column in bold. Sizes: {sizes}.")
    title = "Backbones across datasets" if grouping.is_default else f"{grouping.title} across datasets"
    return Table("cross_dataset", title, caption, data, display, bold, terminal=True)


