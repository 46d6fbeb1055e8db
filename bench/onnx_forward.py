"""ONNX forward through raigate vs bare onnxruntime, side by side.

A ResNet-20 (the public CIFAR-10 weights when ``../shared/data`` has them, else seeded random
weights: the cost is the same) is exported with ``torch.onnx.export`` and loaded as
``onnx:FILE`` twice: black-box (raigate's ``Model.logits`` -> QueryNet -> onnxruntime) and
white-box (the torch conversion). The reference is the bare onnxruntime session doing the
same normalization in numpy, with the same session options (threads, no spinning).
Goal: the black-box adapter costs at most 5% over it (``ratio <= 1.05``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from harness import Benchmark, Case
from raigate import load_model
from raigate.models.onnx import export_onnx
from raigate.zoo import resnet20

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared/data/weights"


def _net() -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    net = resnet20(num_classes=10)
    path = WEIGHTS / "akamaster_resnet20-12fca82f.th"
    if path.is_file():
        from raigate.models.weights import apply_state_dict, load_state_dict_file

        apply_state_dict(net, load_state_dict_file(path), source=path)
        return net.eval(), "public akamaster ResNet-20"
    return net.eval(), "ResNet-20, seeded random weights"


def build(batch: int = 256) -> list[Benchmark]:
    net, what = _net()
    folder = Path(tempfile.mkdtemp(prefix="raigate-bench-onnx-"))
    path = folder / "resnet20.onnx"
    export_onnx(net, path)
    names = [str(i) for i in range(10)]
    common = {"class_names": names, "mean": MEAN, "std": STD}
    black = load_model(f"onnx:{path}", mode="black-box", **common)  # type: ignore[arg-type]
    white = load_model(f"onnx:{path}", mode="white-box", **common)  # type: ignore[arg-type]
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as raigate's session
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32)
    xa = x.numpy()
    mean = np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, np.float32).reshape(1, 3, 1, 1)

    def bare_ort() -> None:
        session.run(None, {"images": (xa - mean) / std})

    def raigate_black() -> None:
        black.logits(x)

    def raigate_white() -> None:
        with torch.no_grad():
            white.logits(x)

    def bare_torch() -> None:
        with torch.no_grad():
            net((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))

    return [
        Benchmark(
            name="onnx_forward[resnet20]",
            description=f"{what} as ONNX, forward of a batch of {batch}x3x32x32, CPU",
            reference="bare onnxruntime + numpy normalization",
            cases=[
                Case("bare onnxruntime + numpy normalization", bare_ort),
                Case("raigate onnx: black-box (Model.logits -> onnxruntime)", raigate_black),
                Case("raigate onnx: white-box (converted torch module)", raigate_white),
                Case("bare torch module + same normalization", bare_torch),
            ],
            items=batch,
            rounds=11,
            params={
                "batch": batch,
                "net": "resnet20",
                "threads": torch.get_num_threads(),
                "weights": what,
            },
        )
    ]
