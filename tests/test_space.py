"""Search spaces: loading, validation messages, Optuna / KerasTuner / grid views, fingerprints.

Backbones are built only to count blocks, and only the cheap ones (simple_cnn, vgg16,
mobilenet_v2); counts are cached in memory for the whole session.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import keras_tuner as kt
import optuna
import pytest

from bench.errors import ConfigError
from bench.search.space import (
    FIELD_RULES,
    SearchSpace,
    block_count,
    builtin_names,
    builtin_space,
    key_lines,
    load_space,
    parse_space,
    resolve_space,
)
from bench.search.space import _blocks as space_mod
from bench.training.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]

# Conditional optimizer settings and cheap backbones: the shape of the default space, small.
COND = """\
name = "cond"

[params.backbone]
type = "categorical"
choices = ["simple_cnn", "vgg16", "mobilenet_v2"]

[params.unfrozen]
type = "blocks"

[params.optimizer]
type = "categorical"
choices = ["adam", "adamw", "sgd"]

[params.momentum]
type = "float"
low = 0.8
high = 0.99
when = { optimizer = "sgd" }

[params.weight_decay]
type = "float"
low = 1e-6
high = 1e-2
log = true
when = { optimizer = "adamw" }

[params.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true

[params.label_smoothing]
type = "fixed"
value = 0.1
when = { optimizer = ["adamw", "sgd"] }
"""


def parse(text: str, origin: str = "x.toml") -> SearchSpace:
    return parse_space(textwrap.dedent(text), origin)


def asks(space: SearchSpace, n: int, fixed: dict | None = None, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        values = space.suggest(trial, fixed)
        study.tell(trial, 0.5)
        yield trial, values


# --- shipped spaces ---------------------------------------------------------------------------


def test_shipped_spaces_load_and_are_found_through_the_package(weights_folder):
    assert {"default", "smoke"} <= set(builtin_names())
    # The package finds them through the bench/search_spaces symlink (wheel installs too).
    assert builtin_space("default").resolve() == (REPO / "search_spaces" / "default.toml").resolve()
    default = load_space(builtin_space("default"))
    assert default.name == "default" and default.metric == "balanced_accuracy"
    assert default.direction == "maximize"
    assert len(default.param("backbone").choices) == 10
    assert default.param("unfrozen").kind == "blocks"
    assert default.param("momentum").when == (("optimizer", ("sgd",)),)
    assert default.param("weight_decay").when == (("optimizer", ("adamw",)),)
    assert default.grid() is None  # continuous floats

    smoke = load_space(builtin_space("smoke"))  # no Lite0 weights in weights_folder
    assert smoke.param("backbone").choices == ("simple_cnn", "mobilenet_v2")
    assert smoke.param("backbone").if_weights_present == ("efficientnet_lite0",)
    assert smoke.param("size").value == 64 and smoke.param("epochs").value == 3
    assert smoke.param("unfrozen").kind == "blocks" and smoke.param("unfrozen").when == (
        ("backbone", ("efficientnet_lite0",)),)
    assert resolve_space("smoke") == builtin_space("smoke")
    assert resolve_space(str(builtin_space("smoke"))) == builtin_space("smoke")


def test_unknown_builtin_space_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"'smok'.*Did you mean 'smoke'.*default, paper, smoke"):
        builtin_space("smok")
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(Path("nowhere/space.toml"))


def test_every_trainconfig_field_but_seed_has_a_rule():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(FIELD_RULES) == names - {"seed"}


# --- validation messages ----------------------------------------------------------------------

ERRORS = {
    "unknown parameter": (
        """
        [params.lr]
        type = "float"
        low = 1e-4
        high = 1e-2

        [params.batchsize]
        type = "categorical"
        choices = [16, 32]
        """,
        7,
        ["([params.batchsize])", "unknown parameter 'batchsize'", "Did you mean 'batch_size'",
         "TrainConfig fields: backbone, weights"],
    ),
    "seed is the run's": (
        "[params.seed]\ntype = \"fixed\"\nvalue = 1\n",
        1,
        ["unknown parameter 'seed'", "--seed"],
    ),
    "unknown key": (
        """
        [params.lr]
        type = "float"
        low = 1e-4
        high = 1e-2
        logscale = true
        """,
        2,
        ["([params.lr])", "unknown key 'logscale'", "Allowed keys: type, low, high, step, log, when"],
    ),
    "unknown type": (
        """
        [params.lr]
        type = "loguniform"
        low = 1e-4
        high = 1e-2
        """,
        2,
        ["unknown type 'loguniform'", "Allowed: categorical, int, float, blocks, fixed"],
    ),
    "type not allowed for the field": (
        """
        [params.batch_size]
        type = "float"
        low = 8
        high = 64
        """,
        2,
        ["batch_size cannot have type 'float'", "allowed types for batch_size: categorical, fixed, int"],
    ),
    "missing type": (
        "[params.lr]\nlow = 1e-4\nhigh = 1e-2\n",
        1,
        ["missing 'type'", "float"],
    ),
    "reversed int range": (
        """
        [params.batch_size]
        type = "int"
        low = 64
        high = 16
        """,
        2,
        ["([params.batch_size])", "reversed range low = 64, high = 16", "needs low < high"],
    ),
    "empty float range": (
        """
        [params.dropout]
        type = "float"
        low = 0.2
        high = 0.2
        """,
        2,
        ["needs low < high", "fixed"],
    ),
    "empty choices": (
        """
        [params.augment]
        type = "categorical"
        choices = []
        """,
        2,
        ["non-empty list 'choices'"],
    ),
    "repeated choice": (
        "[params.augment]\ntype = \"categorical\"\nchoices = [\"none\", \"none\"]\n",
        1,
        ["choice 'none' is listed twice"],
    ),
    "log range with low <= 0": (
        """
        [params.batch_size]
        type = "int"
        low = -2
        high = 64
        log = true
        """,
        2,
        ["log range needs low > 0, got low = -2."],
    ),
    "step and log": (
        """
        [params.lr]
        type = "float"
        low = 0.001
        high = 0.01
        step = 0.001
        log = true
        """,
        2,
        ["'step' and 'log' cannot be combined"],
    ),
    "step does not divide the range": (
        """
        [params.batch_size]
        type = "int"
        low = 16
        high = 100
        step = 16
        """,
        2,
        ["not a multiple of step = 16", "make high 96 or 112"],
    ),
    "value outside the field's range": (
        """
        [params.dropout]
        type = "float"
        low = 0.0
        high = 1.0
        """,
        2,
        ["dropout 'high'", "needs a number in [0.0, 1.0)", "got 1.0"],
    ),
    "unknown backbone": (
        """
        [params.backbone]
        type = "categorical"
        choices = ["resnet50", "resnet5", "vgg16"]
        """,
        2,
        ["backbone choice: unknown backbone 'resnet5'", "Did you mean 'resnet50'", "Allowed: resnet50,"],
    ),
    "unknown optimizer": (
        "[params.optimizer]\ntype = \"fixed\"\nvalue = \"adan\"\n",
        1,
        ["unknown optimizer 'adan'", "Did you mean 'adam'", "Allowed: adam, adamw, sgd, rmsprop"],
    ),
    "unknown augmentation": (
        "[params.augment]\ntype = \"categorical\"\nchoices = [\"none\", \"strong\"]\n",
        1,
        ["unknown augmentation policy 'strong'", "Allowed: none, light, medium, heavy"],
    ),
    "blocks on another field": (
        "[params.epochs]\ntype = \"blocks\"\n",
        1,
        ["epochs cannot have type 'blocks'"],
    ),
    "blocks before the backbone": (
        """
        [params.unfrozen]
        type = "blocks"

        [params.backbone]
        type = "categorical"
        choices = ["vgg16", "simple_cnn"]
        """,
        2,
        ["([params.unfrozen])", "[params.backbone] (line 5) must come before it"],
    ),
    "when on a later parameter": (
        """
        [params.momentum]
        type = "float"
        low = 0.8
        high = 0.99
        when = { optimizer = "sgd" }

        [params.optimizer]
        type = "categorical"
        choices = ["adam", "sgd"]
        """,
        2,
        ["([params.momentum])", "'optimizer', which is defined later (line 8)",
         "move [params.optimizer] above [params.momentum]"],
    ),
    "when on an unknown parameter": (
        """
        [params.optimizer]
        type = "categorical"
        choices = ["adam", "sgd"]

        [params.momentum]
        type = "float"
        low = 0.8
        high = 0.99
        when = { optimiser = "sgd" }
        """,
        6,
        ["'optimiser', which is not a parameter of this space", "Did you mean 'optimizer'",
         "Earlier parameters: optimizer"],
    ),
    "when on a value that can never be": (
        """
        [params.optimizer]
        type = "categorical"
        choices = ["adam", "sgd"]

        [params.momentum]
        type = "float"
        low = 0.8
        high = 0.99
        when = { optimizer = ["sgd", "adamw"] }
        """,
        6,
        ["optimizer = 'adamw', a value 'optimizer' can never take", "{'adam', 'sgd'}"],
    ),
    "when on a continuous float": (
        """
        [params.lr]
        type = "float"
        low = 1e-4
        high = 1e-2

        [params.dropout]
        type = "fixed"
        value = 0.1
        when = { lr = 0.001 }
        """,
        7,
        ["cannot depend on 'lr', a continuous float"],
    ),
    "size below a backbone's minimum": (
        """
        [params.backbone]
        type = "categorical"
        choices = ["vgg16", "inception_v3"]

        [params.size]
        type = "fixed"
        value = 64
        """,
        6,
        ["([params.size])", "size 64 is too small for backbone 'inception_v3'", "at least 75 px"],
    ),
    "imagenet without imagenet weights": (
        """
        [params.backbone]
        type = "categorical"
        choices = ["simple_cnn", "vgg16"]

        [params.weights]
        type = "fixed"
        value = "imagenet"
        """,
        6,
        ["([params.weights])", "'simple_cnn' has no ImageNet weights", "weights 'none'"],
    ),
    "unknown metric": (
        """
        [objective]
        metric = "balanced_acc"

        [params.epochs]
        type = "fixed"
        value = 3
        """,
        3,
        ["([objective])", "unknown metric 'balanced_acc'", "Did you mean 'balanced_accuracy'",
         "Allowed: accuracy, balanced_accuracy"],
    ),
    "direction against the metric": (
        """
        [objective]
        metric = "auc"
        direction = "minimize"

        [params.epochs]
        type = "fixed"
        value = 3
        """,
        4,
        ["([objective])", "auc is better when higher", "must be 'maximize'"],
    ),
    "not a direction": (
        "[objective]\nmetric = \"log_loss\"\ndirection = \"max\"\n[params]\nepochs = 3\n",
        3,
        ["direction must be 'maximize' or 'minimize', got 'max'"],
    ),
    "unknown objective key": (
        "[objective]\nmetric = \"auc\"\ngoal = \"max\"\n[params]\nepochs = 3\n",
        3,
        ["unknown key 'goal' in [objective]", "Allowed keys: metric, direction"],
    ),
    "unknown top-level key": (
        "name = \"x\"\ntrials = 20\n[params]\nepochs = 3\n",
        2,
        ["unknown key 'trials'", "Allowed at the top level: name, description, objective, params"],
    ),
    # Inline and dotted-key styles: the line is that of the parameter's key.
    "inline table style": (
        """
        name = "inline"

        [params]
        epochs = 3
        lr = { type = "float", low = 0, high = 0.1, log = true }
        """,
        6,
        ["([params.lr])", "log range needs low > 0, got low = 0."],
    ),
    "dotted key style": (
        """
        params.epochs.type = "fixed"
        params.epochs.value = 3
        params.optimizer.type = "fixed"
        params.optimizer.value = "adagrad"
        """,
        4,
        ["([params.optimizer])", "unknown optimizer 'adagrad'"],
    ),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_validation_errors_name_the_file_line_and_what_is_allowed(case, tmp_path):
    text, line, expected = ERRORS[case]
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line {line}"), message
    for part in expected:
        assert part in message, (part, message)


def test_the_documented_example_message():
    text = "# header\n" * 13 + "[params.lr]\ntype = \"float\"\nlow = 0\nhigh = 1e-2\nlog = true\n"
    with pytest.raises(ConfigError) as err:
        parse_space(text, "search_spaces/x.toml")
    assert str(err.value) == (
        "search_spaces/x.toml, line 14 ([params.lr]): log range needs low > 0, got low = 0."
    )


def test_invalid_toml_and_empty_space():
    with pytest.raises(ConfigError, match=r"x.toml: not valid TOML .*line 2"):
        parse("[params.lr]\ntype = \n")
    with pytest.raises(ConfigError, match=r"x.toml: no parameters"):
        parse("name = 'empty'\n")


def test_key_lines_skips_multiline_strings_and_reads_inline_tables():
    text = textwrap.dedent(
        '''\
        description = """
        lr = not a key
        """
        [params]
        lr = { type = "float", low = 1, high = 2 }
        [params.epochs]
        value = 3
        '''
    )
    lines = key_lines(text)
    assert lines[("params", "lr")] == 5
    assert lines[("params", "lr", "low")] == 5
    assert lines[("params", "epochs")] == 6
    assert lines[("params", "epochs", "value")] == 7
    assert ("lr",) not in lines


# --- Optuna -----------------------------------------------------------------------------------


@pytest.fixture
def weights_folder(tmp_path, monkeypatch):
    """An empty weights folder (and Keras cache): no ImageNet file is present until a test adds one."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("BENCH_WEIGHTS", str(folder))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return folder


def test_smoke_suggestions_are_valid_train_configs(weights_folder):
    smoke = load_space(builtin_space("smoke"))  # no Lite0 weights here: the search runs without it
    assert smoke.param("backbone").choices == ("simple_cnn", "mobilenet_v2")
    assert len(smoke.notes) == 1 and "bench weights convert efficientnet_lite0" in smoke.notes[0]
    seen = set()
    for trial, values in asks(smoke, 30):
        config = TrainConfig(**values)
        assert config.weights is None and config.size == 64 and config.epochs == 3
        assert config.unfrozen == "all" and config.optimizer == "adam"
        assert 1e-4 <= config.lr <= 3e-3 and 0.0 <= config.dropout <= 0.3
        # Fixed parameters are not search dimensions.
        assert set(trial.params) == {"backbone", "lr", "batch_size", "augment", "dropout"}
        seen.add(config.backbone)
    assert seen == {"simple_cnn", "mobilenet_v2"}


def test_smoke_space_uses_imagenet_lite0_when_its_weights_are_present(weights_folder):
    from bench.models import get_backbone

    without = load_space(builtin_space("smoke"))
    (weights_folder / get_backbone("efficientnet_lite0").imagenet_file).write_bytes(b"present")
    smoke = load_space(builtin_space("smoke"))
    assert smoke.param("backbone").choices == ("simple_cnn", "mobilenet_v2", "efficientnet_lite0")
    assert smoke.notes == () and smoke.fingerprint != without.fingerprint  # a study cannot mix the two
    seen = set()
    for _, values in asks(smoke, 40):
        config = TrainConfig(**values)
        seen.add(config.backbone)
        if config.backbone == "efficientnet_lite0":  # transfer learning: frozen or the last block tuned
            assert config.weights == "imagenet" and config.unfrozen in (0, 1)
        else:
            assert config.weights is None and config.unfrozen == "all"
    assert seen == {"simple_cnn", "mobilenet_v2", "efficientnet_lite0"}


@pytest.mark.parametrize("line, message", [
    ('if_weights_present = ["resnet50"]', "not one of the choices"),
    ('if_weights_present = ["simple_cnn"]', "no ImageNet weights"),
    ('if_weights_present = "simple_cnn"', "must be a list of backbone names"),
])
def test_if_weights_present_is_validated(line, message, weights_folder):
    text = f'[params.backbone]\ntype = "categorical"\nchoices = ["simple_cnn", "mobilenet_v2"]\n{line}\n'
    with pytest.raises(ConfigError, match=message):
        parse_space(text, "s.toml")
    with pytest.raises(ConfigError, match="belongs to \\[params.backbone\\] only"):
        parse_space('[params.augment]\ntype = "categorical"\nchoices = ["none"]\nif_weights_present = ["none"]\n',
                    "s.toml")


def test_space_with_only_absent_weight_choices_is_an_error(weights_folder):
    text = ('[params.backbone]\ntype = "categorical"\nchoices = ["mobilenet_v2"]\n'
            'if_weights_present = ["mobilenet_v2"]\n')
    with pytest.raises(ConfigError, match="every choice needs ImageNet weights"):
        parse_space(text, "s.toml")


def test_conditional_parameters_appear_only_when_their_condition_holds():
    space = parse(COND)
    optimizers = set()
    for trial, values in asks(space, 30):
        TrainConfig(**values)
        opt = values["optimizer"]
        optimizers.add(opt)
        assert ("momentum" in values) == (opt == "sgd") == ("momentum" in trial.params)
        assert ("weight_decay" in values) == (opt == "adamw") == ("weight_decay" in trial.params)
        assert ("label_smoothing" in values) == (opt in ("adamw", "sgd"))
    assert optimizers == {"adam", "adamw", "sgd"}


def test_blocks_are_suggested_per_backbone_within_its_block_count():
    space = parse(COND)
    counts = {b: block_count(b) for b in ("simple_cnn", "vgg16", "mobilenet_v2")}
    assert counts == {"simple_cnn": 4, "vgg16": 5, "mobilenet_v2": 11}
    highs = {}
    for trial, values in asks(space, 30, seed=1):
        backbone, depth = values["backbone"], values["unfrozen"]
        name = f"unfrozen[{backbone}]"
        assert trial.params[name] == depth and "unfrozen" not in trial.params
        assert 0 <= depth <= counts[backbone]
        highs[backbone] = trial.distributions[name].high
    assert highs == counts


def test_blocks_bounds_are_clipped_to_each_backbone():
    space = parse(
        """
        [params.backbone]
        type = "categorical"
        choices = ["simple_cnn", "vgg16", "mobilenet_v2"]

        [params.unfrozen]
        type = "blocks"
        low = 2
        high = 8
        """
    )
    ranges = {}
    for trial, values in asks(space, 20):
        dist = trial.distributions[f"unfrozen[{values['backbone']}]"]
        ranges[values["backbone"]] = (dist.low, dist.high)
    assert ranges == {"simple_cnn": (2, 4), "vgg16": (2, 5), "mobilenet_v2": (2, 8)}


def test_block_counts_are_cached_on_disk(monkeypatch, isolated_dirs):
    import bench.models

    monkeypatch.setattr(space_mod, "_BLOCK_COUNTS", {})
    assert block_count("vgg16") == 5
    stored = json.loads((isolated_dirs / "cache" / "block_counts.json").read_text())
    assert stored["vgg16"]["blocks"] == 5

    def no_build(model):
        raise AssertionError("the disk cache should have answered")

    monkeypatch.setattr(space_mod, "_BLOCK_COUNTS", {})
    monkeypatch.setattr(bench.models, "blocks", no_build)
    assert block_count("vgg16") == 5


def test_block_structure_does_not_depend_on_input_size():
    from bench.models import blocks, get_backbone

    spec = get_backbone("mobilenet_v2")
    small, large = (len(blocks(spec.build((s, s, 3), None))) for s in (32, 96))
    assert small == large == block_count("mobilenet_v2")


def test_fixed_values_are_pinned_not_suggested():
    default = load_space(builtin_space("default"))
    fixed = {"backbone": "vgg16", "size": 96, "weights": None, "seed": 3}
    for trial, values in asks(default, 10, fixed=fixed):
        assert values["backbone"] == "vgg16" and values["size"] == 96
        assert values["weights"] is None and values["seed"] == 3
        assert "backbone" not in trial.params and "size" not in trial.params
        assert 0 <= trial.params["unfrozen[vgg16]"] <= 5
        TrainConfig(**values)

    with pytest.raises(ConfigError, match="unknown TrainConfig field 'sise'.*Did you mean 'size'"):
        default.check_fixed({"sise": 64})
    with pytest.raises(ConfigError, match="size: needs a whole number >= 16, got 8"):
        default.check_fixed({"size": 8})
    # --size 64 with the default space: InceptionV3 needs 75 px, and says so before training.
    with pytest.raises(ConfigError, match="size 64 is too small for backbone 'inception_v3'"):
        default.check_fixed({"size": 64})
    assert default.check_fixed({"size": 64, "backbone": "vgg16"})["size"] == 64
    smoke = load_space(builtin_space("smoke"))
    with pytest.raises(ConfigError, match="size 64 is too small for backbone 'inception_v3'"):
        smoke.check_fixed({"backbone": "inception_v3"})  # the space fixes size 64
    with pytest.raises(ConfigError, match="'simple_cnn' has no ImageNet weights"):
        smoke.check_fixed({"weights": "imagenet"})
    # The smoke space gives ImageNet weights to Lite0 alone (`when`): pinning the size checks them for it only.
    assert smoke.check_fixed({"size": 32}) == {"size": 32}


# --- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_follows_the_content_not_the_layout():
    base = parse(COND)
    relaid = parse(
        "# a comment\n\n"
        + COND.replace('name = "cond"', 'name = "renamed"\ndescription = "words"')
        .replace("low = 0.8", "low   =   0.8   # comment")
        .replace("\n\n", "\n\n\n")
    )
    assert relaid.fingerprint == base.fingerprint
    inline = parse(COND.replace('[params.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true',
                                '[params.lr]\ntype = "float"\nlow = 0.0001\nhigh = 0.01\nlog = true'))
    assert inline.fingerprint == base.fingerprint
    changed = parse(COND.replace("high = 0.99", "high = 0.98"))
    assert changed.fingerprint != base.fingerprint
    reordered_choices = parse(COND.replace('["adam", "adamw", "sgd"]', '["sgd", "adam", "adamw"]'))
    assert reordered_choices.fingerprint != base.fingerprint
    objective = parse(COND + '\n[objective]\nmetric = "auc"\n')
    assert objective.fingerprint != base.fingerprint
    assert len(base.fingerprint) == 64


# --- KerasTuner -------------------------------------------------------------------------------


def test_keras_tuner_registers_the_same_space_with_conditions():
    space = parse(COND)
    hp = kt.HyperParameters()
    values = space.to_keras_tuner(hp)
    # Defaults of a fresh HyperParameters: first choice, low bounds; inactive ones left out.
    assert values == {"backbone": "simple_cnn", "unfrozen": 0, "optimizer": "adam", "lr": 1e-4}
    TrainConfig(**values)
    registered = {h.name: h for h in hp.space}
    assert set(registered) == {
        "backbone", "unfrozen[simple_cnn]", "unfrozen[vgg16]", "unfrozen[mobilenet_v2]",
        "optimizer", "momentum", "weight_decay", "lr", "label_smoothing",
    }
    assert registered["unfrozen[vgg16]"].max_value == 5
    assert registered["unfrozen[mobilenet_v2]"].max_value == 11
    assert registered["weight_decay"].sampling == "log"
    assert [c.name for c in registered["momentum"].conditions] == ["optimizer"]

    chosen = kt.HyperParameters()
    chosen.values.update({"backbone": "vgg16", "unfrozen[vgg16]": 3, "optimizer": "sgd", "momentum": 0.9})
    values = space.to_keras_tuner(chosen)
    assert values["unfrozen"] == 3 and values["momentum"] == 0.9
    assert values["label_smoothing"] == 0.1 and "weight_decay" not in values


def test_keras_tuner_oracle_samples_valid_conditional_configs(tmp_path):
    space = parse(COND)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"), max_trials=25, seed=0)
    oracle._set_project_dir(str(tmp_path), "space")
    hp = kt.HyperParameters()
    space.to_keras_tuner(hp)
    oracle.update_space(hp)
    optimizers = set()
    for _ in range(15):
        trial = oracle.create_trial("worker0")
        values = space.to_keras_tuner(trial.hyperparameters)
        TrainConfig(**values)
        optimizers.add(values["optimizer"])
        assert ("momentum" in values) == (values["optimizer"] == "sgd")
        assert ("weight_decay" in values) == (values["optimizer"] == "adamw")
        assert 0 <= values["unfrozen"] <= block_count(values["backbone"])
        oracle.update_trial(trial.trial_id, {"score": 0.5})
        oracle.end_trial(trial)
    assert optimizers == {"adam", "adamw", "sgd"}


def test_keras_tuner_with_pinned_values_and_mixed_choices():
    space = parse(COND)
    hp = kt.HyperParameters()
    values = space.to_keras_tuner(hp, fixed={"optimizer": "sgd", "backbone": "vgg16"})
    names = [h.name for h in hp.space]
    assert "optimizer" not in names and "backbone" not in names and "weight_decay" not in names
    assert "unfrozen[vgg16]" in names and "unfrozen[simple_cnn]" not in names
    assert values["momentum"] == 0.8 and values["optimizer"] == "sgd"

    # A condition on a pinned value that fails skips the parameter and those that depend on it.
    chain = parse(
        """
        [params.optimizer]
        type = "categorical"
        choices = ["adam", "sgd"]

        [params.early_stopping]
        type = "categorical"
        choices = [0, 5]

        [params.reduce_lr]
        type = "categorical"
        choices = [2, 3]
        when = { early_stopping = 5 }

        [params.momentum]
        type = "float"
        low = 0.8
        high = 0.99
        when = { reduce_lr = 3 }
        """
    )
    hp = kt.HyperParameters()
    values = chain.to_keras_tuner(hp, fixed={"early_stopping": 0})
    assert [h.name for h in hp.space] == ["optimizer"]
    assert values == {"optimizer": "adam", "early_stopping": 0}

    mixed = parse('[params.unfrozen]\ntype = "categorical"\nchoices = [0, 2, "all"]\n')
    one_type = r"x.toml, line 1 \(\[params.unfrozen\]\): KerasTuner needs choices of one type"
    with pytest.raises(ConfigError, match=one_type):
        mixed.to_keras_tuner(kt.HyperParameters())


# --- grid and describe ------------------------------------------------------------------------

GRIDDABLE = """
[params.backbone]
type = "categorical"
choices = ["simple_cnn", "vgg16"]

[params.batch_size]
type = "int"
low = 16
high = 48
step = 16

[params.dropout]
type = "float"
low = 0.0
high = 0.2
step = 0.1

[params.epochs]
type = "fixed"
value = 3

[params.class_weights]
type = "categorical"
choices = [true, false]
"""


def test_grid_enumerates_discrete_spaces_for_grid_sampler():
    space = parse(GRIDDABLE)
    grid = space.grid()
    assert grid == {
        "backbone": ["simple_cnn", "vgg16"],
        "batch_size": [16, 32, 48],
        "dropout": [0.0, 0.1, 0.2],
        "class_weights": [True, False],
    }
    assert space.grid_size() == 36
    assert space.grid(fixed={"backbone": "vgg16"}) == {k: v for k, v in grid.items() if k != "backbone"}

    configs = set()

    def objective(trial: optuna.Trial) -> float:
        values = space.suggest(trial)
        TrainConfig(**values)
        configs.add(tuple(sorted(values.items())))
        return 0.5

    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(objective, n_trials=50)  # GridSampler stops the study after 36
    assert len(study.trials) == 36 and len(configs) == 36

    assert parse(COND).grid() is None  # blocks and continuous floats
    assert parse('[params.unfrozen]\ntype = "blocks"\n').grid() is None


def test_describe_rows():
    rows = parse(COND).describe()
    assert [r["name"] for r in rows] == [
        "backbone", "unfrozen", "optimizer", "momentum", "weight_decay", "lr", "label_smoothing",
    ]
    by_name = {r["name"]: r for r in rows}
    assert by_name["momentum"]["when"] == "optimizer = 'sgd'"
    assert by_name["label_smoothing"]["when"] == "optimizer in {'adamw', 'sgd'}"
    assert by_name["weight_decay"]["range"] == "1e-06 .. 0.01 (log)"
    assert by_name["unfrozen"]["range"] == "0 .. n_blocks of the backbone"
    assert by_name["optimizer"]["line"] == 10
    assert set(rows[0]) == {"name", "type", "range", "when", "line"}
