"""The overlays of ``bench explain`` and of ``bench final``'s held-out grid, for any method of
``bench.deploy.explainers`` (Grad-CAM, LIME, occlusion)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.atomic import write_atomic
from bench.deploy.explainers import Options, get_method, make_explainer
from bench.deploy.gradcam import DEFAULT_ALPHA, Target, find_target_layer, overlay
from bench.errors import ConfigError, DataError

# ---- bench explain -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainResult:
    rows: list[dict[str, Any]]  # one per explained image: path, overlay, predicted, explained, p_<class>
    unreadable: list[tuple[str, str]]  # (path, reason)
    csv: Path
    target: Target | None  # where Grad-CAM looked; None for the model-agnostic methods
    method: str = "gradcam"


def _overlay_name(path: Path, rel: str | None, taken: set[str], method: str = "gradcam") -> str:
    stem = (rel.rsplit(".", 1)[0].replace("/", "__") if rel else path.stem) or "image"
    name, n = f"{stem}.{method}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.{method}.png"
    taken.add(name)
    return name


def explain_paths(model_path: Path, inputs: Sequence[Path], out_dir: Path, *, class_name: str | None = None,
                  block: int = -1, display_size: int | None = None, batch_size: int = 16,
                  alpha: float = DEFAULT_ALPHA, verify: bool = True, method: str = "gradcam",
                  options: Options | None = None) -> ExplainResult:
    """Overlays of one explanation method (``gradcam``, ``lime``, ``occlusion``) for image files and
    folders, written to ``out_dir`` as ``<name>.<method>.png`` with ``<method>.csv``.

    Each image is decoded exactly as for training (``bench predict``'s rules, from the model
    card); the overlay is drawn on the same image decoded at ``display_size`` (default: the
    model's size, at least 224 px) so the map lines up whatever the resize mode.
    """
    from bench.data.images import decode_image, decode_many
    from bench.deploy.predict import collect_images, load_predictor

    get_method(method)  # an unknown name fails before the model loads
    predictor = load_predictor(model_path, verify=verify)
    card = predictor.card
    classes = list(card.classes)
    explained: int | None = None
    if class_name is not None:
        if class_name not in classes:
            from bench.errors import close_matches

            raise ConfigError(f"Class {class_name!r} is not one of the model's classes {classes}."
                              f"{close_matches(class_name, classes)}")
        explained = classes.index(class_name)
    explain = make_explainer(method, predictor.model, replace(options or Options(), block=block))
    items, unreadable = collect_images(inputs, classes)
    if not items and not unreadable:
        raise DataError("No image files found in " + ", ".join(str(p) for p in inputs) + ".")
    show = display_size or max(card.size, 224)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        failed_here: dict[int, str] = {}
        x, failed = decode_many([it.path for it in chunk], card.size, card.resize, workers=1,
                                on_error=lambda i, err: failed_here.__setitem__(i, err.reason))
        good = [i for i in range(len(chunk)) if i not in failed_here]
        unreadable.extend((str(chunk[i].path), failed_here[i]) for i in sorted(failed_here))
        if not good:
            continue
        result = explain(x[good], explained)
        for j, i in enumerate(good):
            item = chunk[i]
            big = decode_image(item.path, show, card.resize)
            name = _overlay_name(item.path, item.rel, taken, method)
            _save_png(overlay(big, result.maps[j], alpha), out_dir / name)
            p = result.proba[j]
            row = {"path": str(item.path), "overlay": name, "predicted": classes[int(np.argmax(p))],
                   "explained": classes[int(result.explained[j])], "confidence": float(np.max(p))}
            if item.truth is not None:
                row["truth"] = item.truth
            row.update({f"p_{c}": float(p[k]) for k, c in enumerate(classes)})
            rows.append(row)
    if not rows:
        listing = "\n".join(f"  {p}: {r}" for p, r in unreadable[:20])
        raise DataError(f"None of the {len(unreadable)} image file(s) could be read:\n{listing}")
    csv_path = out_dir / f"{method}.csv"
    _write_rows(csv_path, rows, classes)
    target = find_target_layer(predictor.model, block) if method == "gradcam" else None
    return ExplainResult(rows, unreadable, csv_path, target, method)


def _write_rows(path: Path, rows: list[dict[str, Any]], classes: Sequence[str]) -> None:
    lead = ["path", "overlay", "truth", "predicted", "explained", "confidence"]
    columns = [c for c in lead if any(c in r for r in rows)] + [f"p_{c}" for c in classes]

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(path, write)


def _save_png(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda f: Image.fromarray(array).save(f, format="PNG"), binary=True)


# ---- the report's grid ---------------------------------------------------------------------------------


def _pick(frame: Any, classes: Sequence[str], per_class: int) -> list[tuple[int, str, list[int]]]:
    """Per class: the most confidently correct and the most confidently wrong test images."""
    proba = frame[[f"p_{c}" for c in classes]].to_numpy(dtype="float64")
    pred = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    target = frame["target"].to_numpy(dtype=int)
    picks = []
    for c in range(len(classes)):
        for kind, mask in (("correct", (target == c) & (pred == c)), ("wrong", (target == c) & (pred != c))):
            rows = np.flatnonzero(mask)
            rows = rows[np.argsort(-conf[rows], kind="stable")][:per_class]
            picks.append((c, kind, rows.tolist()))
    return picks


def explanation_grid(run_dir: Path, out_png: Path, per_class: int = 2, *, backbone: str | None = None,
                     images: Mapping[str, np.ndarray] | None = None, method: str = "gradcam") -> Path | None:
    """A labelled grid of one method's overlays (Grad-CAM by default) of held-out test predictions,
    for the report; the method is named in its title.

    One row per true class; ``per_class`` columns of correct predictions (most confident first),
    then ``per_class`` of wrong ones (most confidently wrong first). The model is the run's
    winner (``bench.deploy.export.select_backbone``: best cross-validation score, not test score)
    unless ``backbone`` (a final entry: a backbone, or a combination's key) is given. Returns None
    when the run has no final model (``bench final`` not run) or none of its test images can be
    read any more. ``images`` maps a test path to its
    cached uint8 pixels at the model's size (``bench final`` passes them: no second decode, and
    sources with no image files, such as npz arrays, work too).
    """
    from bench.deploy.export import select_backbone
    from bench.deploy.predict import load_predictor
    from bench.results import RunDir, entry_keys

    explainer = get_method(method)
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    run = RunDir.open(Path(run_dir))
    final = run.final().get("backbones") or {}
    try:
        chosen = select_backbone(run, backbone)
    except DataError:
        return None
    info = final.get(chosen)
    model_path = run.model_path(chosen)
    if info is None or not model_path.is_file():
        return None
    frame = run.table("test_predictions")
    if frame.empty:
        return None
    frame = frame[entry_keys(frame) == chosen].reset_index(drop=True)
    classes = list(info["classes"])
    if frame.empty or any(f"p_{c}" not in frame for c in classes):
        return None
    predictor = load_predictor(model_path)
    card = predictor.card
    dataset = run.manifest().get("dataset") or {}
    root = Path(dataset.get("root", ""))
    explain = make_explainer(method, predictor.model)
    picks = _pick(frame, classes, per_class)
    show = max(card.size, 160)

    from bench.data.images import UnreadableImage, decode_image

    cells: dict[tuple[int, int], tuple[np.ndarray, str, bool]] = {}
    for c, kind, rows in picks:
        col0 = 0 if kind == "correct" else per_class
        for j, r in enumerate(rows):
            if images is not None:
                if (x := images.get(frame.path[r])) is None:
                    continue
                big = np.asarray(Image.fromarray(np.asarray(x, dtype=np.uint8)).resize((show, show), Image.Resampling.BILINEAR))
            else:
                path = root / frame.path[r]
                try:
                    x = decode_image(path, card.size, card.resize)
                    big = decode_image(path, show, card.resize)
                except UnreadableImage:
                    continue
            # Explain the predicted class: for a wrong prediction, what the model mistook.
            pred = int(np.argmax(frame.loc[r, [f"p_{k}" for k in classes]].to_numpy(dtype="float64")))
            result = explain(x[None], pred)
            p = float(frame.loc[r, f"p_{classes[pred]}"])
            label = f"→ {classes[pred]} {p:.2f}" if kind == "wrong" else f"{classes[pred]} {p:.2f}"
            caption = f"{label}\n{Path(frame.path[r]).name}"
            cells[(c, col0 + j)] = (overlay(big, result.maps[0]), caption, kind == "correct")
    if not cells:
        return None
    _draw_grid(cells, classes, per_class, out_png,
               f"{explainer.title} of {info.get('label', chosen)} (trial {info.get('trial')}) on the held-out "
               f"test set of {dataset.get('name', '?')}; each title: predicted class and its probability")
    return out_png


def _draw_grid(cells: dict[tuple[int, int], tuple[np.ndarray, str, bool]], classes: Sequence[str], per_class: int,
               out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows = len(classes)
    fig = Figure(figsize=(2.0 * 2 * per_class + 0.9, 2.2 * n_rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    halves = fig.subfigures(1, 2, wspace=0.04)
    for h, (sub, heading, colour) in enumerate(zip(halves, ("correct", "wrong"), ("#1a7f37", "#b42318"))):
        sub.suptitle(heading, fontsize=10, fontweight="bold", color=colour)
        axes = sub.subplots(n_rows, per_class, squeeze=False)
        for r in range(n_rows):
            for c in range(per_class):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                cell = cells.get((r, h * per_class + c))
                if cell is None:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", color="#888888", fontsize=9,
                            transform=ax.transAxes)
                    for spine in ax.spines.values():
                        spine.set_visible(False)
                else:
                    image, label, _ = cell
                    ax.imshow(image)
                    ax.set_title(label, fontsize=7, color=colour)
                    for spine in ax.spines.values():
                        spine.set_edgecolor(colour)
                        spine.set_linewidth(2)
                if c == 0:
                    ax.set_ylabel(f"true {classes[r]}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, metadata={"Software": None})
