"""raigate: audit an image model for bias, robustness, privacy and explanation quality,
and seal the results into one signed, offline-verifiable report.

>>> import raigate
>>> data = raigate.load_data("demo:test", limit=4)
>>> model = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
>>> model.class_names == data.class_names
True
"""

from __future__ import annotations

from raigate._version import __version__
from raigate.data import Dataset, Manifest, load_data, select
from raigate.errors import (
    ConfigError,
    DataError,
    GateFailed,
    MissingDependencyError,
    ModelLoadError,
    RaigateError,
    SpecError,
    UserError,
)
from raigate.models import Capabilities, Model, load_model, wrap
from raigate.results import CheckResult, DataRef, Finding, ModelRef

__all__ = [
    "Capabilities",
    "CheckResult",
    "ConfigError",
    "DataError",
    "DataRef",
    "Dataset",
    "Finding",
    "GateFailed",
    "Manifest",
    "MissingDependencyError",
    "Model",
    "ModelLoadError",
    "ModelRef",
    "RaigateError",
    "SpecError",
    "UserError",
    "__version__",
    "load_data",
    "load_model",
    "select",
    "wrap",
]
