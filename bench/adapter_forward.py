"""Batched forward throughput of the reference nets through the ``Model`` adapter vs the bare
module. Goal: the adapter costs under 5% over the bare module doing the same normalization."""

from __future__ import annotations

import torch

from harness import Benchmark, Case
from raigate import wrap
from raigate.zoo import resnet20, small_cnn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build(batch: int = 256) -> list[Benchmark]:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out: list[Benchmark] = []
    for name, factory in (("small_cnn", small_cnn), ("resnet20", resnet20)):
        net = factory(num_classes=10).eval()
        model = wrap(
            net,
            class_names=[str(i) for i in range(10)],
            input_shape=(3, 32, 32),
            mean=MEAN,
            std=STD,
        )

        def bare(net: torch.nn.Module = net) -> None:
            with torch.no_grad():
                net(x)

        def bare_norm(net: torch.nn.Module = net) -> None:
            with torch.no_grad():
                net((x - mean) / std)

        def adapter(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                model.logits(x)

        out.append(
            Benchmark(
                name=f"adapter_forward[{name}]",
                description=f"{name} forward, batch {batch}x3x32x32, CPU, no_grad",
                reference="bare module + same normalization",
                cases=[
                    Case("bare module + same normalization", bare_norm),
                    Case("raigate Model.logits (adapter)", adapter),
                    Case("bare module, no normalization", bare),
                ],
                items=batch,
                rounds=21 if name == "small_cnn" else 11,
                params={"batch": batch, "net": name, "threads": torch.get_num_threads()},
            )
        )
    return out
