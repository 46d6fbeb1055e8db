"""Data specs and the ``Dataset`` contract behind them.

Spec forms::

    fairface:ROOT[:train|val]   FairFace's official CSV + image layout (default split: val)
    cifar100:ROOT[:train|test]  the official cifar-100-python pickles (default split: test)
    folder:ROOT                 one subfolder per class
    csv:FILE                    columns path,label plus any attribute columns
    demo[:train|test]           built-in synthetic faces-like data (default split: test)

>>> from raigate.data import load_data
>>> data = load_data("demo:test", limit=8)
>>> x, y, i = data[0]
>>> tuple(x.shape), data.synthetic
((3, 32, 32), True)
"""

from __future__ import annotations

from raigate.data.base import Dataset, Manifest, resize_tensor, select
from raigate.data.demo import DEMO_DISPARITY
from raigate.data.specs import DATA_SPEC_HELP, load_data, register_data_loader

__all__ = [
    "DATA_SPEC_HELP",
    "DEMO_DISPARITY",
    "Dataset",
    "Manifest",
    "load_data",
    "register_data_loader",
    "resize_tensor",
    "select",
]
