"""``bench weights``: list, pull, export, import and convert pretrained weight files.

The arguments and the printing of the command; the work is ``bench.models.store``'s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.cli._base import Command, quiet_frameworks, stdout_console

OFFLINE_HELP = "never touch the network (same as BENCH_OFFLINE=1): a missing file fails at once"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        # SUPPRESS: when not given here, keep whatever `bench weights --offline` set.
        p.add_argument("--offline", action="store_true", default=argparse.SUPPRESS, help=OFFLINE_HELP)
        return p

    p = action("list", "For every backbone: are its ImageNet weights here (path, size, checksum)?")
    p.add_argument("names", nargs="*", help="only these backbones")
    p.add_argument("--json", action="store_true", help="print JSON (full checksums) instead of a table")

    p = action("pull", "Download Keras ImageNet weight files (or a named ViT's keras-hub preset) into the weights folder (needs internet).")
    p.add_argument("names", nargs="*", help="backbones to pull (see `bench weights list`)")
    p.add_argument("--all", action="store_true", help="every backbone with a downloadable Keras ImageNet file (keras-hub presets: by name)")

    p = action("export", "Copy the weight files here into DIR with a SHA256SUMS, for an air-gapped machine.")
    p.add_argument("dir", type=Path, help="folder to write (a USB stick, a shared drive)")
    p.add_argument("names", nargs="*", help="only these backbones (default: every file present)")

    p = action("import", "Install the weight files of an exported DIR into the weights folder, checked.")
    p.add_argument("dir", type=Path, help="the folder `bench weights export` wrote")

    p = action("convert", "Make ImageNet weights that ship as a Python package (efficientnet_lite0).")
    p.add_argument("name", help="backbone to convert, e.g. efficientnet_lite0")
    p.add_argument("--source", type=Path, help="the PyTorch state dict (default: the installed package's file)")
    p.add_argument("--force", action="store_true", help="convert again even if the file is already here")


def run(args: argparse.Namespace, console: Any) -> int:
    from bench.models.weights import weights_dirs

    handler = {"list": _list, "pull": _pull, "export": _export, "import": _import, "convert": _convert}
    code = handler[args.action](args, console)
    if args.action != "list" or not getattr(args, "json", False):
        console.print(f"weights folder: {weights_dirs()[0]} (searched: {', '.join(map(str, weights_dirs()))})")
    return code


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _list(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from bench.models.store import inspect

    infos = inspect(args.names)
    if args.json:
        print(json.dumps([
            {
                "backbone": i.backbone, "file": i.file, "present": i.present,
                "path": str(i.path) if i.path else None, "size": i.size,
                "sha256": i.digests.sha256 if i.digests else None,
                "md5": i.digests.md5 if i.digests else None,
                "check": i.check, "source": i.source,
            }
            for i in infos
        ], indent=2))  # fmt: skip
        return 0
    table = Table(title="ImageNet weights on this machine")
    for col in ("backbone", "status", "size", "sha256", "checksum", "path / how to get it"):
        table.add_column(col, overflow="fold")
    for i in infos:
        where = str(i.path) if i.path else (
            i.source if i.source.startswith("bench ") else f"bench weights pull {i.backbone}"
        )
        if i.is_preset and not i.path:
            where += f" (keras-hub preset {i.file}: a folder)"
        table.add_row(
            i.backbone, "present" if i.present else "[yellow]missing[/]", _size(i.size),
            i.digests.sha256[:16] + "…" if i.digests else "-",
            i.check if not i.check.startswith("MISMATCH") else f"[red]{i.check}[/]", where,
        )  # fmt: skip
    console.print(table)
    missing = sum(not i.present for i in infos)
    console.print(f"{len(infos) - missing} of {len(infos)} present; full checksums: bench weights list --json")
    return 0


def _pull(args: argparse.Namespace, console: Any) -> int:
    from bench.models.store import pull

    def start(spec: Any, url: str) -> None:
        console.print(f"{spec.name}: downloading {spec.imagenet_file or spec.imagenet_preset} from {url}")

    for p in pull(args.names, everything=args.all, on_start=start):
        if p.action == "convert":
            console.print(f"{p.backbone}: not downloaded; make it with `bench weights convert {p.backbone}`")
        elif p.action == "by name":
            console.print(f"{p.backbone}: a keras-hub preset, not in --all; `bench weights pull {p.backbone}` fetches it")
        else:
            console.print(f"{p.backbone}: {p.action} {p.path} (checksum: {p.check or 'converted here'})")
    return 0


def _export(args: argparse.Namespace, console: Any) -> int:
    from bench.models.store import SUMS_FILE, export

    copied = export(args.dir, args.names)
    for path, sha in copied:
        console.print(f"exported {path.name} (sha256 {sha})")
    console.print(f"{len(copied)} file(s) and {SUMS_FILE} in {args.dir}; on the other machine: "
                  f"bench weights import {args.dir}")
    return 0


def _import(args: argparse.Namespace, console: Any) -> int:
    from bench.models.store import import_dir

    result = import_dir(args.dir)
    for path in result.installed:
        console.print(f"imported {path}")
    for path in result.unchanged:
        console.print(f"already here, identical: {path}")
    if result.ignored:
        console.print(f"ignored (no backbone uses them): {', '.join(result.ignored)}")
    return 0


def _convert(args: argparse.Namespace, console: Any) -> int:
    from bench.models import get_backbone, imagenet_path
    from bench.models.store import convert

    spec = get_backbone(args.name)
    local = imagenet_path(spec) if spec.imagenet_convert else None
    if local is not None and args.source is None and not args.force:
        console.print(f"{args.name}: already converted: {local} (--force converts again)")
        return 0
    done = convert(args.name, args.source)
    console.print(
        f"{args.name}: wrote {done.path} ({_size(done.path.stat().st_size)}, {done.tensors} tensors) "
        f"from {done.source} (sha256 {done.source_sha256}); `--weights imagenet` now uses it"
    )
    return 0


class WeightsCommand(Command):
    name = "weights"
    help = "Pretrained weight files: list, pull, export/import (air-gapped machines), convert."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        return run(args, stdout_console())
