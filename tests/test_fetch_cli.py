"""`bench fetch` through the registry, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from bench.cli import main
from tests.conftest import write_image


@pytest.fixture
def served(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def make_archive(site: Path, tmp_path: Path) -> str:
    src = tmp_path / "src"
    for cls in ("benign", "malignant"):
        for i in range(6):
            write_image(src / "histo" / cls / f"{cls}{i}.png", 40 if cls == "benign" else 200)
    archive = site / "histo.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(src.rglob("*.png")):
            z.write(f, f.relative_to(src).as_posix())
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def registry(tmp_path: Path, url: str, sha: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(
        f'[histo]\ntitle = "Toy histology"\ntask = "binary"\npositive = "malignant"\nimage_size = 32\n'
        f'source = {{ kind = "archive", url = "{url}", sha256 = "{sha}", root = "histo" }}\n'
    )
    return path


def test_fetch_then_list_then_cross_validate(served, tmp_path, capsys, isolated_dirs):
    site, base = served
    sha = make_archive(site, tmp_path)
    reg = registry(tmp_path, f"{base}/histo.zip", sha)
    assert main(["datasets", "--registry", str(reg)]) == 0
    assert "not downloaded" in capsys.readouterr().out
    assert main(["fetch", "histo", "--registry", str(reg)]) == 0
    assert (isolated_dirs / "data" / "histo" / "histo" / "benign" / "benign0.png").is_file()
    capsys.readouterr()
    assert main(["datasets", "--registry", str(reg)]) == 0
    assert "12 found" in capsys.readouterr().out
    code = main(["cv", "--dataset", "histo", "--registry", str(reg), "--backbone", "simple_cnn", "--folds", "2",
                 "--epochs", "1", "--augment", "none", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err


def test_fetch_with_no_network_says_where_to_put_the_files(tmp_path, capsys):
    reg = registry(tmp_path, "http://127.0.0.1:9/histo.zip", "0" * 64)  # port 9: nothing listens
    code = main(["fetch", "histo", "--registry", str(reg)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "by hand" in err and "histo" in err and "Traceback" not in err


def test_fetch_refuses_a_wrong_checksum(served, tmp_path, capsys):
    site, base = served
    make_archive(site, tmp_path)
    reg = registry(tmp_path, f"{base}/histo.zip", "f" * 64)
    code = main(["fetch", "histo", "--registry", str(reg)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "sha256" in err.lower()


def test_a_root_the_archive_does_not_hold_is_an_error_naming_what_it_holds(served, tmp_path, capsys, isolated_dirs):
    site, base = served
    sha = make_archive(site, tmp_path)
    reg = tmp_path / "registry.toml"
    reg.write_text(registry(tmp_path, f"{base}/histo.zip", sha).read_text().replace('root = "histo"',
                                                                                    'root = "Histo"'))
    code = main(["fetch", "histo", "--registry", str(reg)])
    out, err = capsys.readouterr()
    err = " ".join(err.split())
    assert code == 2 and "ready" not in out
    assert "histo" in err and str(isolated_dirs / "data" / "histo" / "Histo") in err
    assert "The archive holds: histo/" in err and "Traceback" not in err


def test_a_bad_checksum_of_one_entry_keeps_another_entrys_download_of_the_same_name(served, tmp_path, capsys,
                                                                                   isolated_dirs):
    site, base = served
    sha = make_archive(site, tmp_path)
    (site / "mirror").mkdir()
    (site / "mirror" / "histo.zip").write_bytes(b"not the same archive")
    good = registry(tmp_path, f"{base}/histo.zip", sha).read_text()
    bad = good.replace("[histo]", "[other]").replace(f"{base}/histo.zip", f"{base}/mirror/histo.zip")
    reg = tmp_path / "two.toml"
    reg.write_text(good + "\n" + bad)
    assert main(["fetch", "histo", "--registry", str(reg)]) == 0
    assert main(["fetch", "other", "--registry", str(reg)]) == 2
    assert "sha256" in capsys.readouterr().err
    kept = list((isolated_dirs / "data" / "downloads").rglob("histo.zip"))
    assert len(kept) == 1 and hashlib.sha256(kept[0].read_bytes()).hexdigest() == sha
    # so histo is rebuilt without the network after its folder is lost
    shutil.rmtree(isolated_dirs / "data" / "histo")
    site.joinpath("histo.zip").unlink()
    assert main(["fetch", "histo", "--registry", str(reg)]) == 0


def test_a_file_url_is_fetched_checked_and_unpacked(tmp_path, capsys, isolated_dirs):
    site = tmp_path / "share"
    site.mkdir()
    sha = make_archive(site, tmp_path)
    reg = registry(tmp_path, (site / "histo.zip").as_uri(), sha)
    assert main(["fetch", "histo", "--registry", str(reg)]) == 0
    assert (isolated_dirs / "data" / "histo" / "histo" / "malignant" / "malignant0.png").is_file()
    wrong = registry(tmp_path, (site / "histo.zip").as_uri(), "e" * 64)
    shutil.rmtree(isolated_dirs / "data" / "histo")
    shutil.rmtree(isolated_dirs / "data" / "downloads")
    assert main(["fetch", "histo", "--registry", str(wrong)]) == 2
    assert "sha256" in capsys.readouterr().err.lower()
