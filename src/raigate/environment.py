"""What ran the audit: package versions, Python, platform and device, for every result."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from raigate._version import __version__

# The packages whose versions change results; reported whether or not they were imported.
_PACKAGES = (
    "torch",
    "numpy",
    "pandas",
    "pillow",
    "safetensors",
    "transformers",
    "opacus",
    "adversarial-robustness-toolbox",
    "fairlearn",
    "captum",
    "scikit-learn",
    "scipy",
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
