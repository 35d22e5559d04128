"""`bench predict` / `bench explain` refuse a model and card that do not belong together (issue 14).

A real exported model (the session's tiny simple_cnn search run, see test_export.py), real edited
cards, a real MobileNetV2 file, real non-UTF-8 file names; everything through bench.cli.main.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.test_export import (  # noqa: F401 (fixtures)
    class_folder,
    exported,
    final_run,
    heldout_images,
    run_main,
)


@pytest.fixture
def images(final_run, tmp_path) -> Path:
    return class_folder(heldout_images(final_run, n_per_class=3), tmp_path / "images")


def edit_card(model: Path, change) -> Path:
    card_path = model.with_name(model.name.removesuffix(".keras") + ".card.json")
    card = json.loads(card_path.read_text())
    change(card)
    card_path.write_text(json.dumps(card, indent=2))
    return card_path


def test_a_card_with_reversed_classes_is_refused(exported, images, tmp_path, capsys):
    card_path = edit_card(exported, lambda c: c.update(classes=c["classes"][::-1]))
    for argv in (["predict", exported, images], ["explain", exported, images, "--out", tmp_path / "cams"]):
        code, out, err = run_main(capsys, *argv)
        # Today: accepted, and every prediction flipped.
        assert code == 2, out
        assert f"The model card {card_path} was edited after export" in err and str(exported) in err
        assert "--no-verify" in err and "Traceback" not in err
    # On purpose: the user can override the digests (and then gets what the card says).
    code, out, err = run_main(capsys, "predict", exported, images, "--no-verify")
    assert code == 0, err


def test_a_model_file_that_is_not_the_exported_one_is_refused(exported, images, tmp_path, capsys):
    other = tmp_path / "other.keras"
    shutil.copy(exported, other)
    shutil.copy(exported.with_name("winner.card.json"), tmp_path / "other.card.json")
    with open(other, "ab") as f:
        f.write(b"\0")  # a different file (still a loadable zip)
    code, _, err = run_main(capsys, "predict", other, images)
    assert code == 2
    assert f"{other} is not the model its card {tmp_path / 'other.card.json'} was written for" in err


def test_a_mobilenet_file_under_a_simple_cnn_card_is_refused(exported, images, tmp_path, capsys):
    from bench.deploy.export import card_binding
    from bench.models.head import build_classifier

    impostor = tmp_path / "impostor" / "winner.keras"
    impostor.parent.mkdir()
    build_classifier("mobilenet_v2", 2, 32, weights="none").model.save(impostor)
    card_path = impostor.with_name("winner.card.json")
    shutil.copy(exported.with_name("winner.card.json"), card_path)
    code, _, err = run_main(capsys, "predict", impostor, images)
    assert code == 2 and "is not the model its card" in err  # the sha256 catches it first

    # Even with sha256 and binding forged to match, the model itself is not a simple_cnn.
    def forge(card: dict) -> None:
        card["model"]["sha256"] = hashlib.sha256(impostor.read_bytes()).hexdigest()
        card["model"]["binding"] = card_binding(card)

    edit_card(impostor, forge)
    for extra in ([], ["--no-verify"]):
        code, _, err = run_main(capsys, "predict", impostor, images, *extra)
        assert code == 2
        assert f"{impostor} is a mobilenet_v2 model" in err and "describes a simple_cnn model" in err


def test_predict_csv_with_non_utf8_names_is_complete(exported, images, tmp_path, capsys):
    raw = os.fsencode(images)
    good = next((images / "NORMAL").iterdir())
    shutil.copy(good, raw + b"/NORMAL/caf\xe9.jpeg")
    out_csv = tmp_path / "out" / "pred.csv"
    out_csv.parent.mkdir()
    out_csv.write_text("previous,results\n")
    code, out, err = run_main(capsys, "predict", exported, images, "--csv", out_csv)
    # Today: UnicodeEncodeError after writing part of the CSV.
    assert code == 0, err
    assert "NORMAL/caf\\xe9.jpeg" in err and "not valid UTF-8" in err
    frame = pd.read_csv(out_csv)
    assert len(frame) == 6 and list(frame.columns[:3]) == ["path", "truth", "predicted"]
    assert [p.name for p in out_csv.parent.iterdir()] == ["pred.csv"]


# --------------------------------------------------------------------------- a run's own model file (issue 23)


@pytest.fixture
def own_run(final_run, tmp_path) -> Path:
    """A copy of the session's run after `bench final`, free to damage."""
    run = tmp_path / "own-run"
    shutil.copytree(final_run, run)
    return run


def _edit_final(run: Path, change) -> Path:
    path = run / "final.json"
    data = json.loads(path.read_text())
    change(data["backbones"]["simple_cnn"])
    path.write_text(json.dumps(data, indent=2))
    return path


def test_a_runs_own_model_is_checked_against_what_bench_final_recorded(own_run, images, capsys):
    # Before: the "card" of runs/X/models/<bb>.keras was built from final.json with the sha256 of the
    # file as it was at that moment, so it verified whatever was there: edited classes in final.json
    # flipped every prediction with exit 0.
    model = own_run / "models" / "simple_cnn.keras"
    final = _edit_final(own_run, lambda e: e.update(classes=e["classes"][::-1]))
    for argv in (["predict", model, images], ["explain", model, images, "--out", own_run / "cams"]):
        code, out, err = run_main(capsys, *argv)
        assert code == 2, out
        assert f"The model card {final} was edited after `bench final` wrote it" in err
        assert f"Re-run `bench final --run {own_run}`" in err and "Traceback" not in err
    code, out, err = run_main(capsys, "predict", model, images, "--no-verify")
    assert code == 0, err
    assert "warning: --no-verify: the model file's sha256 and its card's binding are not checked" in err


def test_another_model_under_a_runs_model_name_is_refused(own_run, images, capsys):
    model = own_run / "models" / "simple_cnn.keras"
    with open(model, "ab") as f:
        f.write(b"\0")  # another file (still a loadable zip), as a copy over it or a torn commit leaves
    code, _, err = run_main(capsys, "predict", model, images)
    assert code == 2
    assert f"{model} is not the model its record {own_run / 'final.json'} was written for" in err
    code, _, err = run_main(capsys, "export", "--run", own_run, "--out", own_run / "out" / "m.keras")
    assert code == 2 and not (own_run / "out" / "m.keras").exists()
    assert f"{model} is not the model {own_run / 'final.json'} describes" in err
    assert f"Re-run `bench final --run {own_run} --backbone simple_cnn`" in err


def test_export_refuses_a_record_edited_since_bench_final(own_run, capsys):
    _edit_final(own_run, lambda e: e.update(classes=e["classes"][::-1]))
    code, _, err = run_main(capsys, "export", "--run", own_run, "--out", own_run / "out" / "m.keras")
    assert code == 2 and f"{own_run / 'final.json'} was edited after `bench final` wrote it" in err


def test_a_record_without_a_sha256_is_not_trusted(own_run, images, capsys):
    _edit_final(own_run, lambda e: (e.pop("model_sha256", None), e.pop("model_binding", None)))
    code, _, err = run_main(capsys, "export", "--run", own_run, "--out", own_run / "out" / "m.keras")
    assert code == 2 and "records no sha256 for simple_cnn.keras" in err
    code, _, err = run_main(capsys, "predict", own_run / "models" / "simple_cnn.keras", images)
    assert code == 2 and "has no sha256/binding" in err and "Re-run `bench final" in err
