"""The built-in data spec schemes, one module per format.

``LOADERS`` maps a scheme to ``loader(spec, target, task) -> Dataset``; ``specs.load_data``
reads it once and :func:`raigate.data.register_data_loader` adds or replaces schemes.
"""

from __future__ import annotations

from raigate.data.cifar100 import load_cifar100
from raigate.data.demo import load_demo
from raigate.data.fairface import load_fairface
from raigate.data.files import load_csv, load_folder
from raigate.data.specs import DataLoaderFn

LOADERS: dict[str, DataLoaderFn] = {
    "fairface": load_fairface,
    "cifar100": load_cifar100,
    "folder": load_folder,
    "csv": load_csv,
    "demo": load_demo,
}
