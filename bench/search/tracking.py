"""MLflow glue for ``--mlflow URI``: a search's trials and ``bench final``'s held-out results.

Trials are logged by optuna-integration's ``MLflowCallback`` (one MLflow run per finished trial,
``trial/<number>``, in the experiment named after the study: its parameters, the objective as
``cv_<metric>``), wrapped here so that each run also gets bench's own numbers (every metric's
fold mean and std, the objective on each fold as steps) and tags (dataset, study, backbone, run
directory). Each search worker process makes its own callback: Optuna runs callbacks in the
process that ran the trial. ``log_final`` reads what ``bench final`` wrote to the run directory
(final.json, test_metrics.csv, the model file) and logs each refitted model as ``final/<entry>``
with its model card.

mlflow is imported only here and only when a URI is given, so bench works without it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench.environment import temporary_env
from bench.errors import BenchError, ConfigError

ENV = "BENCH_MLFLOW_URI"
INSTALL = "pip install -e '.[tracking]'"
FINAL_PREFIX = "final/"
TRIAL_PREFIX = "trial/"
# Set before mlflow is imported: its telemetry thread starts at import and posts to the internet.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# Checking the URI must answer in seconds: mlflow's defaults retry a dead server for minutes.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def resolve_uri(arg: str | None) -> str | None:
    """The tracking URI of ``--mlflow`` (else ``BENCH_MLFLOW_URI``), a bare path made a ``file:`` URI."""
    uri = (arg or os.environ.get(ENV) or "").strip()
    if not uri:
        return None
    if "://" not in uri and not uri.startswith(("file:", "databricks", "sqlite:")):
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def shown(uri: str) -> str:
    """``uri`` for messages: a password in it (http://user:pw@host) replaced by ***."""
    from bench.search.storage import redact

    return redact(uri)


def _file_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(parsed.path) if parsed.scheme == "file" else None


def _mlflow(uri: str) -> Any:
    """mlflow, configured for ``uri``: no telemetry, and the file store allowed when asked for.

    MLflow 3 refuses ``file:`` stores unless MLFLOW_ALLOW_FILE_STORE is set (the format is in
    maintenance mode); a user who names a file store has chosen it, so bench opts in for them.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if _file_path(uri) is not None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"--mlflow {shown(uri)}: the mlflow package is not installed. Install bench's tracking extra: "
                          f"`{INSTALL}` (or `pip install mlflow-skinny`), or drop --mlflow / unset {ENV}.") from None
    return mlflow


def _client(uri: str) -> Any:
    mlflow = _mlflow(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _bad_uri(uri: str, err: BaseException) -> ConfigError:
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    path = _file_path(uri)
    fix = (f"give a folder you can write (e.g. --mlflow file://{Path.cwd() / 'mlruns'})" if path is not None
           else "check the URI (file:///path/to/mlruns, sqlite:///mlflow.db or http://host:5000) and that the server "
                "is up")
    return ConfigError(f"--mlflow {shown(uri)}: cannot use this MLflow tracking store ({type(err).__name__}: {first}). "
                       f"{fix[0].upper()}{fix[1:]}, or drop --mlflow / unset {ENV}.")


def check(uri: str) -> str:
    """Fail now, with the fix, if ``uri`` cannot be logged to: mlflow missing, a folder that cannot
    be written, a server that does not answer. Returns ``uri``."""
    _mlflow(uri)  # a missing package is named first, whatever else is wrong
    path = _file_path(uri)
    try:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".bench-probe-"):
                pass
        client = _client(uri)
        with temporary_env(PROBE_ENV, override=False):
            client.search_experiments(max_results=1)
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001 - OSError, MlflowException, connection errors: all the user's URI
        raise _bad_uri(uri, err) from None
    return uri


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` (created if new): made once, before workers race to create it."""
    client = _client(uri)
    try:
        with temporary_env(PROBE_ENV, override=False):
            found = client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage != "active":
                    raise ConfigError(f"--mlflow {shown(uri)}: experiment '{name}' is deleted. Restore it (`mlflow "
                                      f"experiments restore --experiment-id {found.experiment_id}`) or delete it for "
                                      f"good (`mlflow gc`), or use another --study name.")
                return str(found.experiment_id)
            return str(client.create_experiment(name))
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001
        # Another worker or machine created it a moment ago.
        found = _quiet(lambda: client.get_experiment_by_name(name))
        if found is not None:
            return str(found.experiment_id)
        raise _bad_uri(uri, err) from None


def _quiet(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _key(name: str) -> str:
    """An MLflow metric name: letters, digits, ``_ - . /`` and spaces only (``fold-ensemble+tta``)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


# ---- trials ----------------------------------------------------------------------------------
class TrialLogger:
    """The ``study.optimize`` callback of one worker process.

    A failure to log (a server gone) never fails the search: the trial is in the study either
    way; ``on_error(number, message)`` reports it.
    """

    def __init__(self, uri: str, metric: str, tags: dict[str, str],
                 on_error: Callable[[int, str], None] | None = None) -> None:
        mlflow = _mlflow(uri)
        from optuna_integration import MLflowCallback

        self.mlflow = mlflow
        self.uri, self.metric = uri, metric
        self.objective_key = f"cv_{metric}"
        self.on_error = on_error or (lambda number, message: None)
        with warnings.catch_warnings():  # optuna-integration 4.9+ marks it deprecated; it is still the callback
            warnings.simplefilter("ignore")
            self.callback = MLflowCallback(
                tracking_uri=uri, metric_name=self.objective_key, create_experiment=True,
                mlflow_kwargs={"tags": dict(tags)},
                # bench's user attributes (the config, fold lists) are logged below as metrics and one tag
                tag_trial_user_attrs=False,
            )

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.user_attrs.get("surplus"):  # stepped back before training: not a trial of the search
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.callback(study, trial)
            run = self.mlflow.last_active_run()
            if run is None or run.data.tags.get("number") != str(trial.number):
                raise RuntimeError("the callback's MLflow run was not found")
            self._log_extras(run.info.run_id, trial)
        except Exception as err:  # noqa: BLE001 - see the class docstring
            self.on_error(trial.number, f"{type(err).__name__}: {str(err)[:300]}")

    def _log_extras(self, run_id: str, trial: Any) -> None:
        from mlflow.entities import Metric, RunTag

        attrs = trial.user_attrs
        now = int(time.time() * 1000)
        metrics: list[Any] = []
        for fold, value in enumerate(attrs.get("fold_values") or []):
            if _finite(value):
                metrics.append(Metric(f"fold_{self.metric}", float(value), now, fold))
        if trial.state.name == "COMPLETE":  # a pruned trial's means cover only the folds it reached
            for prefix, key in (("cv_", "cv_mean"), ("cv_std_", "cv_std")):
                for name, value in sorted((attrs.get(key) or {}).items()):
                    if _finite(value) and f"{prefix}{name}" != self.objective_key:
                        metrics.append(Metric(_key(f"{prefix}{name}"), float(value), now, 0))
        for name in ("seconds", "seconds_per_epoch", "images_per_second", "folds_done", "trainable_params"):
            if _finite(attrs.get(name)):
                metrics.append(Metric(name, float(attrs[name]), now, 0))
        config = attrs.get("config") or {}
        tags = {"backbone": config.get("backbone"), "config": json.dumps(config, sort_keys=True, default=str),
                "fail_reason": attrs.get("fail_reason"), "pruned_at_fold": attrs.get("pruned_at_fold"),
                "pruned_at_epoch": attrs.get("pruned_at_epoch"), "objective": self.metric}
        client = self.mlflow.MlflowClient(tracking_uri=self.uri)
        client.log_batch(run_id, metrics=metrics,
                         tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items() if v is not None])
        client.update_run(run_id, name=f"{TRIAL_PREFIX}{trial.number}")  # beside final/<backbone> in one experiment


def trial_logger(uri: str, *, metric: str, dataset: str, study: str, run_dir: str,
                 on_error: Callable[[int, str], None] | None = None) -> TrialLogger:
    from bench import __version__

    tags = {"dataset": dataset, "study": study, "run_dir": str(run_dir), "bench_version": __version__,
            "source": "bench run"}
    return TrialLogger(uri, metric, tags, on_error)


# ---- bench final -----------------------------------------------------------------------------
def experiment_name(manifest: dict[str, Any], run_path: Path) -> str:
    """The search's study (as its trials were logged); a ``bench cv`` run has none: its folder name."""
    return str(manifest.get("study") or run_path.name)


def log_final(uri: str, run_dir: Path, keys: Iterable[str], say: Callable[[str], Any] | None = None) -> dict[str, str]:
    """Log the held-out evaluation of each entry in ``keys`` (what ``bench final`` just wrote to
    ``run_dir``) as MLflow run ``final/<entry>``; returns {entry: MLflow run id}."""
    from bench.results import RunDir

    run = RunDir.open(Path(run_dir))
    manifest = run.manifest()
    experiment = experiment_name(manifest, run.path)
    experiment_id = ensure_experiment(uri, experiment)
    client = _client(uri)
    logged: dict[str, str] = {}
    for key in keys:
        try:
            logged[key] = _log_final_entry(client, experiment_id, run, manifest, key)
        except BenchError:
            raise
        except Exception as err:  # noqa: BLE001 - the evaluation is written; say what was not logged
            raise BenchError(f"--mlflow {shown(uri)}: the held-out evaluation of {key} is in {run.path}, but logging it to "
                             f"MLflow failed ({type(err).__name__}: {str(err)[:300]}).") from None
        if say is not None:
            say(f"  MLflow: {FINAL_PREFIX}{key} logged to experiment '{experiment}' at {shown(uri)} (run {logged[key]})")
    return logged


def _log_final_entry(client: Any, experiment_id: str, run: Any, manifest: dict[str, Any], key: str) -> str:
    from mlflow.entities import Metric, Param

    from bench.deploy.export import build_card, card_paths, render_markdown, verified_run_model
    from bench.results import entry_keys

    info = (run.final().get("backbones") or {})[key]
    table = run.table("test_metrics")
    rows = table[entry_keys(table) == key] if len(table) else table
    now = int(time.time() * 1000)
    metrics: list[Any] = []
    for r in rows.itertuples():
        for suffix, value in (("", r.value), ("_low", r.low), ("_high", r.high)):
            if _finite(value):
                metrics.append(Metric(_key(f"test_{r.metric}{suffix}"), float(value), now, 0))
    variants = run.table("test_variants")
    if len(variants):
        for r in variants[entry_keys(variants) == key].itertuples():
            if _finite(r.value):
                metrics.append(Metric(_key(f"test_{r.variant}_{r.metric}"), float(r.value), now, 0))
    for name in ("refit_epochs", "n_train", "n_inner_val", "seconds"):
        if _finite(info.get(name)):
            metrics.append(Metric(name, float(info[name]), now, 0))
    first = next(rows.itertuples(), None)
    n_images = int(first.n_images) if first is not None else info.get("n_test")
    unit = str(first.unit) if first is not None else None
    n_units = int(first.n_units) if first is not None else None
    ds = manifest.get("dataset") or {}
    config = info.get("config") or {}
    tags = {
        "split": "test", "n_images": n_images, "bootstrap_unit": unit, "bootstrap_units": n_units,
        "n_patients": n_units if unit == "patients" else None,
        "dataset": ds.get("name"), "study": manifest.get("study"), "backbone": info.get("backbone", config.get("backbone")),
        "entry": key, "trial": info.get("trial"), "run_dir": str(run.path.resolve()), "source": "bench final",
        "objective": (manifest.get("objective") or {}).get("metric"),
    }
    params = [Param(k, str(v)[:500]) for k, v in sorted(config.items())]
    mlrun = client.create_run(experiment_id, run_name=f"{FINAL_PREFIX}{key}",
                              tags={k: str(v) for k, v in tags.items() if v is not None})
    run_id = mlrun.info.run_id
    try:
        client.log_batch(run_id, metrics=metrics, params=params, tags=[])
        model = run.model_path(key)
        if model.is_file():
            verified_run_model(run, key)  # the card and the file logged are the pair final.json records
        with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
            card = build_card(run, key, model)
            card_json, card_md = card_paths(Path(tmp) / model.name)
            card_json.write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
            card_md.write_text(render_markdown(card))
            client.log_artifact(run_id, str(card_json), "model_card")
            client.log_artifact(run_id, str(card_md), "model_card")
            rows.to_csv(Path(tmp) / "test_metrics.csv", index=False)
            client.log_artifact(run_id, str(Path(tmp) / "test_metrics.csv"))
        if model.is_file():
            client.log_artifact(run_id, str(model), "model")
        for figure in run.explanation_figures(key).values():
            if Path(figure).is_file():
                client.log_artifact(run_id, str(figure), "figures")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
