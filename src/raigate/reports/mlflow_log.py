"""Log an audit to an MLflow tracking store: one run per audit, so a team that already
tracks its training runs in MLflow sees the release gate next to them.

What one run holds (the report bundle stays the evidence; MLflow is an index into it):

- params: the plan's seed, ``fail_on``, the verdict, the model's spec and digest (and each
  ``[models.NAME]`` variant's digest), the data spec, size and manifest digest;
- metrics: every scalar metric of every check table (``TABLE.METRIC``), and the measured
  value of every gate that has one (``gate.TABLE.ID``); the tables of records (per group,
  per attack row) stay in the bundle, since the gates are their summaries;
- tags: ``gate.TABLE.ID`` = ``pass|warn|fail`` for every gate, ``raigate.verdict``,
  ``raigate.passed``, ``raigate.signed``, ``raigate.bundle`` (the folder logged);
- artifacts: the whole bundle folder, attestation included, so a run's files verify with
  ``raigate verify`` after ``mlflow artifacts download``.

MLflow keys allow only letters, digits and ``_ - . / : space``; gate ids hold ``[race+age]``,
so every key is sanitized the same way (:func:`mlflow_key`): each run of other characters
becomes one ``_``. Works with ``mlflow-skinny`` (the client without the server): ``http(s)://``
tracking servers and ``file:`` stores; ``sqlite:`` and other database stores need the full
``mlflow`` package.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from raigate.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from raigate.audit.runner import AuditOutcome
    from raigate.results import AuditReport

__all__ = ["check_store", "log_audit", "mlflow_key", "require_mlflow"]

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")
# MLflow's own limits (mlflow.utils.validation): entities per log_batch call, value lengths
_PARAMS_TAGS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE = 6000


def require_mlflow() -> Any:
    """Import MLflow or raise the one-line install hint; the CLI calls this before the audit
    starts, so a missing package costs seconds, not the audit's minutes."""
    try:
        import mlflow  # mlflow-skinny provides the same module
    except ImportError as exc:
        raise MissingDependencyError(
            "mlflow-skinny", "--mlflow-uri", install="'raigate[mlflow]'"
        ) from exc
    return mlflow


def mlflow_key(name: str) -> str:
    """``name`` as a key every MLflow store accepts (Windows' stricter set included, no
    slashes so a key never reads as a path): each run of other characters becomes ``_``,
    trailing ``_`` dropped. ``fairness.accuracy_difference[race+gender]`` becomes
    ``fairness.accuracy_difference_race_gender``.

    >>> mlflow_key("fairness.selection_rate_ratio[race+age]")
    'fairness.selection_rate_ratio_race_age'
    """
    return _BAD_KEY_CHARS.sub("_", name).strip("_")[:250] or "_"


def _gate_name(gate: dict[str, Any]) -> str:
    """``TABLE.ID`` for a gate: finding ids start with the check's name, which is the table's
    name unless a table runs a check under another name (``[checks.fairness_fair]``)."""
    table, gate_id = str(gate["check"]), str(gate["id"])
    return gate_id if gate_id.startswith(f"{table}.") else f"{table}.{gate_id}"


def _unique(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Keys made unique after sanitizing (two names that differ only in characters MLflow
    refuses would otherwise overwrite each other): the later one gets ``_2``, ``_3``..."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        name, n = key, 1
        while name in out:
            n += 1
            name = f"{key}_{n}"
        out[name] = value
    return out


def audit_params(report: AuditReport) -> dict[str, str]:
    """The run's params: what was audited and under which rule."""
    from raigate._version import __version__

    params: dict[str, Any] = {
        "seed": report.seed,
        "fail_on": report.fail_on,
        "verdict": report.verdict,
        "model.spec": report.model.get("spec"),
        "model.digest": report.model.get("digest"),
        "data.spec": report.data.get("spec"),
        "data.n": report.data.get("n"),
        "data.manifest_digest": report.data.get("manifest_digest"),
        "raigate.version": __version__,
    }
    for name, variant in report.models.items():
        params[mlflow_key(f"model.{name}.digest")] = variant.get("digest")
    return {k: str(v)[:_MAX_PARAM_VALUE] for k, v in params.items() if v is not None}


def audit_metrics(report: AuditReport) -> dict[str, float]:
    """Every scalar metric of every check table and every gate's measured value."""
    pairs: list[tuple[str, Any]] = []
    for table, result in report.checks.items():
        for name, value in result.metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                pairs.append((mlflow_key(f"{table}.{name}"), float(value)))
    for gate in report.gates:
        if isinstance(gate.get("value"), int | float) and not isinstance(gate["value"], bool):
            pairs.append((mlflow_key(f"gate.{_gate_name(gate)}"), float(gate["value"])))
    return _unique(pairs)


def audit_tags(report: AuditReport, out_dir: Path) -> dict[str, str]:
    """One tag per gate (its severity) and the run's verdict, pass/fail and signature."""
    from raigate.reports.bundle import ATTESTATION

    pairs = [(mlflow_key(f"gate.{_gate_name(g)}"), str(g["severity"])) for g in report.gates]
    return {
        **_unique(pairs),
        "raigate.verdict": report.verdict,
        "raigate.passed": str(report.passed).lower(),
        "raigate.signed": str((out_dir / ATTESTATION).is_file()).lower(),
        "raigate.bundle": str(out_dir.resolve()),
    }


@contextlib.contextmanager
def _mlflow_env(uri: str, *, quick: bool = False) -> Iterator[None]:
    """Environment for one call into MLflow, restored afterwards; a value the user set wins.

    MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set (the store is in
    maintenance mode, not removed); a ``file:`` URI given to raigate is that choice made
    explicitly. ``quick``: no retries and a 10 s timeout, for the check before the audit,
    where an unreachable server should cost seconds (MLflow's default retries take about
    four minutes to give up on a refused connection)."""
    wanted = {}
    if urlparse(uri).scheme in ("", "file"):
        wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if quick:
        wanted |= {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _refused(uri: str, exc: BaseException, what: str) -> ConfigError:
    """One line naming the URI and MLflow's own first line."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ConfigError(f"--mlflow-uri {uri}: {what} ({first})")


def check_store(uri: str, experiment: str = "raigate") -> None:
    """Raise ConfigError now when the store at ``uri`` cannot be used (an unknown scheme,
    a server that does not answer, a store that needs the full ``mlflow`` package), so
    ``raigate audit`` exits 2 before the audit rather than after it. Reads only; a
    ``file:`` store's folder is created, as MLflow does on first use."""
    require_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        with _mlflow_env(uri, quick=True):
            MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except (MlflowException, OSError, ImportError) as exc:
        raise _refused(uri, exc, "MLflow cannot use this tracking store") from exc


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_audit(
    outcome_or_report: AuditOutcome | AuditReport,
    out_dir: str | os.PathLike[str],
    uri: str,
    *,
    experiment: str = "raigate",
    run_name: str | None = None,
) -> str:
    """Log one audit as one MLflow run in ``experiment`` (created if missing) of the tracking
    store at ``uri``, and return the run id. ``out_dir`` is the bundle ``run_audit`` wrote;
    all of it is logged as the run's artifacts. A store that cannot be reached or refuses
    the run raises ConfigError naming the URI; the run is then marked FAILED where it was
    created, so a half-logged run never looks finished.

    ``run_audit(plan, "audit", key=...)`` then ``log_audit(outcome, "audit",
    "file:mlruns")`` is what ``raigate audit PLAN --out audit --mlflow-uri file:mlruns``
    does on rank 0."""
    require_mlflow()
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    report = getattr(outcome_or_report, "report", outcome_or_report)
    folder = Path(out_dir)
    if not (folder / "report.json").is_file():
        raise ConfigError(f"{folder}: no report.json, so not a finished raigate report bundle")
    params, metrics = audit_params(report), audit_metrics(report)
    tags = audit_tags(report, folder)
    run_id: str | None = None
    client: Any = None
    try:
        with _mlflow_env(uri):
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, experiment)
            run = client.create_run(experiment_id, run_name=run_name)
            run_id = run.info.run_id
            for chunk in _batches([Param(k, v) for k, v in params.items()], _PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, params=chunk)
            for chunk in _batches([RunTag(k, v) for k, v in tags.items()], _PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, tags=chunk)
            stamp = int(run.info.start_time)
            entries = [Metric(k, v, stamp, 0) for k, v in metrics.items()]
            for chunk in _batches(entries, _METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=chunk)
            client.log_artifacts(run_id, str(folder))
            client.set_terminated(run_id, "FINISHED")
    except (MlflowException, OSError, ImportError) as exc:
        if run_id is not None:
            with contextlib.suppress(Exception), _mlflow_env(uri):
                client.set_terminated(run_id, "FAILED")
        raise _refused(
            uri,
            exc,
            f"logging to MLflow failed; the bundle in {folder} is complete: log it later "
            "with raigate.reports.mlflow_log.log_audit",
        ) from exc
    return run_id


def _experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, created when missing (another audit may create it at
    the same moment: then its id is read back)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name))
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise ConfigError(
            f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
            "or log to another experiment"
        )
    return str(found.experiment_id)
