"""Commands that use a winner: ``bench export``, ``bench predict``, ``bench explain``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.cli._base import (
    Command,
    add_explain_method,
    add_no_verify,
    explanation_methods,
    list_unreadable,
    quiet_frameworks,
    stdout_console,
    warn_no_verify,
)
from bench.cli.argtypes import positive_int, whole
from bench.errors import ConfigError
from bench.evaluation.variants import ENSEMBLES, TTA_SETS


class ExportCommand(Command):
    name = "export"
    help = "Save a run's refit best model (the one scored on the held-out test) as .keras with a model card."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, required=True, help="a run directory after `bench final`")
        parser.add_argument("--backbone", help="this backbone's model (default: the best by cross-validation)")
        parser.add_argument("--out", type=Path, metavar="FILE.keras",
                            help="where to write the model; FILE.card.json and FILE.card.md go beside it "
                                 "(default <run>/export/<dataset>-<backbone>.keras)")
        parser.add_argument("--ensemble", default="none", choices=list(ENSEMBLES),
                            help="folds: export the fold ensemble of `bench final --ensemble folds` as one model")
        parser.add_argument("--tta", default="none", choices=list(TTA_SETS),
                            help="record this TTA set in the card (`bench predict` then averages over its flips) "
                                 "with the held-out numbers `bench final --tta` scored under it")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        from bench.deploy.export import export_model, resampled
        from bench.evaluation.variants import export_ensemble

        export = export_ensemble if args.ensemble == "folds" else export_model
        result = export(args.run, backbone=args.backbone, out=args.out, tta=args.tta)
        console = stdout_console()
        ev = result.card["evaluation"]
        metric = ev["objective"]["metric"]
        cv = ev["cv"]["metrics"].get(metric) or {}
        test = ev["test"]["metrics"].get(metric) or {}

        def num(x: Any) -> str:
            return "-" if x is None else f"{x:.3f}"

        console.print(f"{result.backbone} (trial {result.card['training']['trial']}): {metric} "
                      f"CV {num(cv.get('mean'))} ± {num(cv.get('std'))}, held-out test {num(test.get('value'))} "
                      f"(95% CI {num(test.get('low'))}-{num(test.get('high'))}, {ev['test'].get('n_images')} images, "
                      f"{resampled(ev['test'])})")
        console.print(f"model: {result.model}\ncard:  {result.card_md}\n       {result.card_json}")
        return 0


class PredictCommand(Command):
    name = "predict"
    help = "Class probabilities for image files or folders from an exported model (same preprocessing as training)."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", type=Path, metavar="MODEL.keras", help="an exported model (its .card.json beside it)")
        parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                            help="image files or folders (a folder of class subfolders is also scored)")
        parser.add_argument("--csv", type=Path, help="write one row per image: path, [truth], predicted, p_<class>...")
        parser.add_argument("--batch-size", type=positive_int, default=64)
        parser.add_argument("--show", type=whole, default=20, help="rows to print (default 20; all go to --csv)")
        parser.add_argument("--operating-point", metavar="NAME|default",
                            help="predict with a threshold from the model card (e.g. sens=0.95, as given to "
                                 "`bench final --operating-point`) instead of argmax ('default')")
        parser.add_argument("--tta", choices=list(TTA_SETS),
                            help="average over these flips, the ones `bench final --tta` scores (default: the set "
                                 "the model card records from `bench export --tta`, else none)")
        add_no_verify(parser)

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        from rich.markup import escape
        from rich.table import Table

        from bench.atomic import check_writable
        from bench.deploy.predict import predict_paths

        warn_no_verify(args)
        if args.csv:  # before any prediction: a place that cannot take the CSV would waste them all
            check_writable(args.csv, "--csv", "Give a file in a folder you can write to.", example="predictions.csv")
        result = predict_paths(args.model, args.paths, batch_size=args.batch_size, verify=not args.no_verify,
                               operating_point=args.operating_point, tta=args.tta)
        console = stdout_console()
        frame = result.frame
        table = Table(title=f"{len(frame)} image(s), {args.model.name}")
        for col in ("path", *(["truth"] if "truth" in frame else []), "predicted", "confidence"):
            table.add_column(col, justify="right" if col == "confidence" else "left", overflow="fold")
        for row in frame.head(max(args.show, 0)).itertuples(index=False):
            d = row._asdict()
            table.add_row(escape(d["path"]), *([d["truth"]] if "truth" in frame else []), d["predicted"],
                          f"{d['confidence']:.3f}")
        if args.show > 0:
            console.print(table)
        if len(frame) > args.show > 0:
            console.print(f"... {len(frame) - args.show} more" + (" (all in --csv)" if args.csv else "; use --csv"))
        if args.operating_point not in (None, "default"):
            console.print(f"predicted at operating point {args.operating_point} (thresholds from the model card, "
                          f"chosen on cross-validation){'' if len(result.classes) == 2 else '; one yes/no column per class in --csv'}")
        if result.tta != "none":
            console.print(f"probabilities averaged over the flips of test-time augmentation set {result.tta}"
                          + ("" if args.tta else " (recorded in the model card)"))
        counts = frame.predicted.value_counts()
        console.print("predicted: " + ", ".join(f"{c} {int(counts.get(c, 0))}" for c in result.classes))
        if result.metrics is not None:
            shown = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "mcc")
            console.print(f"metrics on {result.n_labelled} labelled image(s) (truth = class folder): "
                          + ", ".join(f"{m.replace('_', ' ')} {result.metrics[m]:.3f}" for m in shown
                                      if m in result.metrics))
            cm = Table(title="confusion matrix (rows truth, columns predicted)")
            cm.add_column("")
            for c in result.classes:
                cm.add_column(c, justify="right")
            for c, counts_row in zip(result.classes, result.confusion):
                cm.add_row(c, *[str(int(v)) for v in counts_row])
            console.print(cm)
        if args.csv:
            console.print(f"wrote {result.write_csv(args.csv)}")
        list_unreadable(result.unreadable)
        return 0


class ExplainCommand(Command):
    name = "explain"
    help = "Grad-CAM, LIME or occlusion overlays: where in each image the evidence for the predicted class lies."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", type=Path, metavar="MODEL.keras", help="an exported model (its .card.json beside it)")
        parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
        parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                            help="folder for the overlays (<name>.<method>.png) and <method>.csv")
        add_explain_method(parser, "--method", "explanation method: " + ", ".join(explanation_methods()) +
                            " (default gradcam)")
        parser.add_argument("--class", dest="class_name", metavar="NAME",
                            help="explain this class for every image (default: each image's predicted class)")
        parser.add_argument("--block", type=int, default=-1,
                            help="backbone block whose output is explained: -1 = last (default), -2 = the one "
                                 "before (finer map), ...")
        parser.add_argument("--display-size", type=positive_int, help="overlay side in pixels (default: model size, at least 224)")
        add_no_verify(parser)

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        from bench.deploy.explain import explain_paths

        warn_no_verify(args)
        if args.method != "gradcam" and args.block != -1:
            raise ConfigError(f"--block chooses the layer Grad-CAM reads; --method {args.method} has none. "
                              f"Drop --block, or use --method gradcam.")
        result = explain_paths(args.model, args.paths, args.out, class_name=args.class_name, block=args.block,
                               display_size=args.display_size, verify=not args.no_verify, method=args.method)
        t = result.target
        console = stdout_console()
        if t is not None:
            console.print(f"Grad-CAM on {t.backbone or 'the model'}: block {t.block + 1} of {t.n_blocks} "
                          f"(ends at {t.name}, {t.shape[0]}x{t.shape[1]} map)")
        else:
            console.print(f"{args.method} on the model's predictions")
        console.print(f"{len(result.rows)} overlay(s) in {args.out}; index: {result.csv}")
        list_unreadable(result.unreadable)
        return 0
