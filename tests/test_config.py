from pathlib import Path

import pytest

from bench.data.spec import load_registry, parse_registry
from bench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

GOOD = """
[toy]
title = "Toy"
task = "binary"
classes = ["a", "b"]
positive = "b"
source = { kind = "local", path = "toy" }
"""


def test_shipped_registry_has_the_required_datasets():
    specs = load_registry(REPO / "datasets.toml")
    for name in ("gi8", "gi8v2", "gi23", "gi4", "pneumonia", "chest4", "gastric-histo", "pneumonia-demo"):
        assert name in specs, name
    assert specs["pneumonia"].test.kind == "folder"
    assert specs["pneumonia"].groups.kind == "regex"
    assert specs["gi23"].test.kind == "file"
    assert specs["pneumonia-demo"].source.kind == "embedded"
    assert specs["gi8"].classes and len(specs["gi8"].classes) == 8
    assert specs["chest4"].classes and len(specs["chest4"].classes) == 4


def test_package_copy_is_the_top_level_registry():
    assert (REPO / "bench" / "datasets.toml").read_text() == (REPO / "datasets.toml").read_text()


def test_good_entry_parses():
    spec = parse_registry(GOOD, "x.toml")["toy"]
    assert spec.positive == "b" and spec.classes == ("a", "b")
    assert spec.test.kind == "fraction" and spec.test.fraction == 0.2


@pytest.mark.parametrize(
    "change, words",
    [
        ('colour = "red"', ["[toy]", "unknown field 'colour'", "Allowed:"]),
        ('task = "regression"', ["[toy]", "'task'", "binary, multiclass"]),
        ('image_size = "big"', ["'image_size'", "whole number"]),
        ('resize = "stretch"', ["'resize'", "squash, pad, crop"]),
        ('groups = { kind = "regex" }', ["[toy].groups", "needs 'pattern'"]),
        ('groups = { kind = "regex", pattern = "(" }', ["not a valid regex"]),
        ('test = { kind = "fraction", fraction = 1.5 }', ["[toy].test", "between 0 and 1"]),
        ('test = { kind = "splits" }', ["[toy].test", "'kind'", "fraction, folder, column, file"]),
        ('layout = { kind = "folders", colum = "x" }', ["[toy].layout", "unknown field 'colum'"]),
    ],
)
def test_bad_values_name_entry_field_and_allowed(change, words):
    key = change.split(" =")[0]
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(key + " ")) + "\n" + change + "\n"
    with pytest.raises(ConfigError) as err:
        parse_registry(text, "x.toml")
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_positive_must_be_a_class():
    with pytest.raises(ConfigError, match="'positive' is 'c'"):
        parse_registry(GOOD.replace('positive = "b"', 'positive = "c"'), "x.toml")


def test_archive_needs_url_and_hex_digest():
    text = '[a]\ntitle="A"\ntask="binary"\nsource = { kind = "archive" }\n'
    with pytest.raises(ConfigError, match="needs 'url'"):
        parse_registry(text, "x.toml")
    text = '[a]\ntitle="A"\ntask="binary"\nsource = { kind = "archive", url = "http://x/a.zip", sha256 = "abc" }\n'
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        parse_registry(text, "x.toml")


def test_missing_required_field():
    with pytest.raises(ConfigError, match="missing required field"):
        parse_registry('[a]\ntitle = "A"\nsource = { kind = "local", path = "a" }\n', "x.toml")


def test_invalid_toml_names_the_file():
    with pytest.raises(ConfigError, match="x.toml: not valid TOML"):
        parse_registry("[a\n", "x.toml")
