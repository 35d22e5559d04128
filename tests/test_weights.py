"""`bench weights` and the weights store: list, pull, export/import, offline mode.

Every connection except to 127.0.0.1 raises, and is recorded, so a test can say "no network
was attempted". Pulls run against a real HTTP server on 127.0.0.1 (BENCH_WEIGHTS_URL_BASE)
serving fake weight files whose checksums the test puts in the published table.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import keras
import pytest

from bench.cli import main
from bench.errors import ConfigError, DataError, NetworkError
from bench.models import backbone_names, get_backbone, resolve_weights, store
from bench.models.lite0 import IMAGENET_FILE as LITE0_FILE

RESNET = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
PAYLOAD = b"not really resnet50 weights " * 1000


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture(autouse=True)
def network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Refuse and record every connection that is not to 127.0.0.1."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[0] == "127.0.0.1":
            return real_connect(self, address)
        attempts.append(address)
        raise NetworkAttempt(f"network access in a test: {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", _loopback_only(socket.getaddrinfo, attempts))
    return attempts


def _loopback_only(real, attempts):  # type: ignore[no-untyped-def]
    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in ("127.0.0.1", "localhost"):
            attempts.append(host)
            raise NetworkAttempt(f"name lookup in a test: {host}")
        return real(host, *args, **kwargs)

    return getaddrinfo


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty weights folders; BENCH_OFFLINE and the URL base cleared (and restored after)."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("BENCH_OFFLINE", "")  # setenv, not delenv: `--offline` writes os.environ
    monkeypatch.delenv(store.URL_BASE_ENV, raising=False)
    return tmp_path


class Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.files.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    started: list[Server] = []

    def start(files: dict[str, bytes]) -> Server:
        server = Server(files)
        started.append(server)
        monkeypatch.setenv(store.URL_BASE_ENV, server.base)
        return server

    yield start
    for server in started:
        server.httpd.shutdown()
        server.httpd.server_close()


def publish(monkeypatch: pytest.MonkeyPatch, file: str, data: bytes, algo: str = "sha256") -> None:
    monkeypatch.setitem(store.PUBLISHED, file, f"{algo}:{hashlib.new(algo, data).hexdigest()}")


# --- the published checksums -----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined:UserWarning")
def test_published_checksums_are_the_ones_keras_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    class Asked(Exception):
        pass

    def fake_get_file(fname: str, origin: str, **kwargs: object) -> str:
        raise Asked(fname, kwargs.get("file_hash"))

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", fake_get_file)
    constructors = {
        "resnet50": keras.applications.ResNet50, "resnet50v2": keras.applications.ResNet50V2,
        "vgg16": keras.applications.VGG16, "densenet121": keras.applications.DenseNet121,
        "inception_v3": keras.applications.InceptionV3, "efficientnet_b0": keras.applications.EfficientNetB0,
        "efficientnetv2_b0": keras.applications.EfficientNetV2B0, "mobilenet_v2": keras.applications.MobileNetV2,
        "mobilenet_v3_small": keras.applications.MobileNetV3Small, "convnext_tiny": keras.applications.ConvNeXtTiny,
    }  # fmt: skip
    assert set(constructors) == {n for n in backbone_names() if get_backbone(n).imagenet_url}
    for name, constructor in constructors.items():
        size = {"mobilenet_v2": 224, "inception_v3": 75}.get(name, 32)
        with pytest.raises(Asked) as asked:
            constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
        file, published = asked.value.args
        assert file == get_backbone(name).imagenet_file
        algo = "sha256" if published and len(published) == 64 else "md5"
        assert store.PUBLISHED.get(file) == (f"{algo}:{published}" if published else None), name


# --- offline ---------------------------------------------------------------------------------


def test_offline_missing_keras_file_fails_at_once_without_network(
    home: Path, network: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with pytest.raises(NetworkError) as err:
        resolve_weights(get_backbone("resnet50"), "imagenet")
    message = str(err.value)
    assert RESNET in message and "bench weights pull resnet50" in message
    assert str(home / "weights") in message and "offline" in message
    assert network == []
    with pytest.raises(NetworkError, match="offline"):
        store.pull(["resnet50"])
    assert network == []


def test_cli_offline_flag_fails_before_touching_data_or_network(
    home: Path, network: list, make_folder, isolated_dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_folder({"a": 4, "b": 4})
    t0 = time.perf_counter()
    code = main(["cv", "--offline", "--dataset", str(data), "--backbone", "vgg16", "--weights", "imagenet",
                 "--size", "32", "--folds", "2", "--epochs", "1"])  # fmt: skip
    assert code == 2 and network == []
    err = capsys.readouterr().err
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in err and "bench weights pull vgg16" in err
    assert time.perf_counter() - t0 < 30
    assert not (isolated_dirs / "cache").exists()  # failed before the image cache was built


def test_online_download_failure_names_file_folder_and_route(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(store.URL_BASE_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(NetworkError) as err:
        resolve_weights(get_backbone("resnet50"), "imagenet")
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/{RESNET}" in message and "bench weights pull resnet50" in message
    assert str(home / "weights") in message
    assert not (home / "weights" / RESNET).exists()


# --- pull ------------------------------------------------------------------------------------


def test_pull_downloads_checks_and_installs(home: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve({RESNET: PAYLOAD})
    publish(monkeypatch, RESNET, PAYLOAD)
    [pulled] = store.pull(["resnet50"], progress=False)
    dest = home / "weights" / RESNET
    assert pulled.action == "downloaded" and pulled.path == dest and pulled.check == "ok (sha256)"
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [f"/mirror/{RESNET}"]
    assert not (home / "weights" / f"{RESNET}.unverified").exists()
    assert resolve_weights(get_backbone("resnet50"), "imagenet") == str(dest)

    # Already here and good: no request.
    [again] = store.pull(["resnet50"], progress=False)
    assert again.action == "present" and len(server.requests) == 1


def test_pull_checks_md5_too(home: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    serve({RESNET: PAYLOAD})
    publish(monkeypatch, RESNET, PAYLOAD, "md5")
    [pulled] = store.pull(["resnet50"], progress=False)
    assert pulled.check == "ok (md5)"


def test_pull_refuses_a_checksum_mismatch(home: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    serve({RESNET: PAYLOAD})
    publish(monkeypatch, RESNET, b"the real file")
    with pytest.raises(DataError, match=r"wrong sha256.*deleted"):
        store.pull(["resnet50"], progress=False)
    assert not any((home / "weights").glob("resnet50*"))  # nothing installed, nothing to resume
    assert store.inspect(["resnet50"])[0].present is False


def test_pull_all_downloads_every_keras_file_and_points_lite0_at_convert(
    home: Path, serve, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {}
    for name in backbone_names():
        spec = get_backbone(name)
        if spec.imagenet_url:
            files[spec.imagenet_file] = f"fake {name}".encode()
            publish(monkeypatch, spec.imagenet_file, files[spec.imagenet_file], "md5")
    server = serve(files)
    assert main(["weights", "pull", "--all"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0: not downloaded" in out and "bench weights convert efficientnet_lite0" in out
    assert sorted(p.name for p in (home / "weights").iterdir() if not p.name.startswith(".")) == sorted(files)
    assert len(server.requests) == len(files) == 10


def test_pull_needs_names_or_all(home: Path) -> None:
    with pytest.raises(ConfigError, match="--all"):
        store.pull([])
    with pytest.raises(ConfigError, match="'simple_cnn' has no ImageNet weights"):
        store.pull(["simple_cnn"])


# --- list, export, import --------------------------------------------------------------------


def put(folder: Path, file: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file).write_bytes(data)
    return folder / file


def test_list_reports_path_size_and_checksum(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    put(home / "keras" / "models", RESNET, PAYLOAD)  # Keras' own cache counts too
    publish(monkeypatch, RESNET, PAYLOAD)
    assert main(["weights", "list", "--json"]) == 0
    rows = {r["backbone"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {n for n in backbone_names() if get_backbone(n).has_imagenet}
    r = rows["resnet50"]
    assert r["present"] and r["path"] == str(home / "keras" / "models" / RESNET) and r["size"] == len(PAYLOAD)
    assert r["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() and r["check"] == "ok (sha256)"
    assert rows["vgg16"]["present"] is False and rows["vgg16"]["source"].endswith("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert rows["efficientnet_lite0"]["source"] == "bench weights convert efficientnet_lite0"

    put(home / "keras" / "models", RESNET, b"damaged")
    assert store.inspect(["resnet50"])[0].check == "MISMATCH (sha256)"
    assert main(["weights", "list"]) == 0
    assert "MISMATCH" in capsys.readouterr().out


def test_export_then_import_on_another_machine(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(monkeypatch, RESNET, PAYLOAD)
    put(home / "weights", RESNET, PAYLOAD)
    put(home / "weights", LITE0_FILE, b"converted lite0")
    stick = home / "usb"
    exported = store.export(stick)
    assert sorted(p.name for p, _ in exported) == sorted([RESNET, LITE0_FILE])
    sums = store.read_sums(stick / store.SUMS_FILE)
    assert sums == {RESNET: hashlib.sha256(PAYLOAD).hexdigest(), LITE0_FILE: hashlib.sha256(b"converted lite0").hexdigest()}

    # The air-gapped machine: its own, empty, weights folder, and offline.
    monkeypatch.setenv("BENCH_WEIGHTS", str(home / "airgapped"))
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    (stick / "notes.txt").write_text("hello")
    result = store.import_dir(stick)
    assert sorted(p.name for p in result.installed) == sorted([RESNET, LITE0_FILE])
    assert result.ignored == ["notes.txt"]
    assert resolve_weights(get_backbone("resnet50"), "imagenet") == str(home / "airgapped" / RESNET)
    assert store.import_dir(stick).unchanged and not store.import_dir(stick).installed


def test_import_refuses_damaged_copies(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(home / "weights", RESNET, PAYLOAD)
    put(home / "weights", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", b"mnv2")
    publish(monkeypatch, RESNET, PAYLOAD)
    stick = home / "usb"
    store.export(stick)
    (stick / RESNET).write_bytes(PAYLOAD[:-10])  # truncated in transit
    monkeypatch.setenv("BENCH_WEIGHTS", str(home / "airgapped"))
    with pytest.raises(DataError, match=rf"{RESNET}: sha256 .* is not the .* of SHA256SUMS") as err:
        store.import_dir(stick)
    assert "Imported meanwhile: mobilenet_v2" in str(err.value)
    assert not (home / "airgapped" / RESNET).exists()


def test_import_of_a_folder_without_weights_is_an_error(home: Path) -> None:
    (home / "empty").mkdir()
    with pytest.raises(ConfigError, match="no ImageNet weight file"):
        store.import_dir(home / "empty")
    with pytest.raises(ConfigError, match="not a folder"):
        store.import_dir(home / "nope")


def test_export_of_missing_weights_says_to_pull(home: Path) -> None:
    with pytest.raises(ConfigError, match="bench weights pull"):
        store.export(home / "usb", ["vgg16"])
    with pytest.raises(ConfigError, match="No ImageNet weight files"):
        store.export(home / "usb")


def test_cli_export_and_import(home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    put(home / "weights", LITE0_FILE, b"converted lite0")
    assert main(["weights", "export", str(home / "usb")]) == 0
    monkeypatch.setenv("BENCH_WEIGHTS", str(home / "other"))
    assert main(["weights", "--offline", "import", str(home / "usb")]) == 0
    assert f"imported {home / 'other' / LITE0_FILE}" in capsys.readouterr().out


def test_convert_only_for_convertible_backbones(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"'resnet50' has no conversion.*bench weights pull resnet50"):
        store.convert("resnet50")
    with pytest.raises(ConfigError, match="Unknown backbone"):
        store.convert("lite0")
