"""What ran the audit: package versions, Python, platform and device, for every result."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from raigate._version import __version__

# The packages whose versions can change a number in a report, reported whether or not they
# were imported: a reader who gets different numbers compares these first. Each computes or
# transforms values: the model forward and attacks (torch, numpy, ART, transformers,
# onnxruntime), decoded and resized pixels (pillow), attribute tables and group assignment
# (pandas), DP-SGD noise and accounting (opacus), attributions (captum), fairness metrics
# and ROC curves (fairlearn, scikit-learn), and every interval, test and Holm correction
# (statsmodels, scipy). Left out because they cannot change a number: typer and tqdm (CLI
# and progress), pydantic (validates the plan), cryptography (signs the finished report),
# safetensors and onnx (bit-exact readers of weights and graphs; the ONNX values come from
# onnxruntime or torch), and matplotlib (it draws the plots, whose pixels may change with
# its version, but no value in report.json).
_PACKAGES = (
    "torch",
    "numpy",
    "pandas",
    "pillow",
    "transformers",
    "onnxruntime",
    "opacus",
    "adversarial-robustness-toolbox",
    "fairlearn",
    "captum",
    "scikit-learn",
    "scipy",
    "statsmodels",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter, ``"not installed"`` where missing."""
    out: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def collect_environment(device: str = "cpu") -> dict[str, Any]:
    """A JSON-safe description of the software and hardware a result was computed on."""
    import torch

    from raigate.parallel import current

    return {
        "raigate": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": bool(torch.cuda.is_available()),
        "distributed": current().describe(),  # torchrun: world size, backend, devices
        "packages": package_versions(),
    }
