"""Integrated Gradients cost against its floor: the same number of forward+backward passes.

IG with ``n_steps`` points on ``samples`` images is ``n_steps x samples`` gradient
evaluations; nothing can be cheaper than doing exactly those passes in the same batches.
Cases: that raw loop (reference), raigate's ``integrated-gradients`` method (with its
convergence delta, as the check runs it) and Captum's ``IntegratedGradients`` called
directly. Goal: raigate / raw <= 1.1.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters

from harness import Benchmark, Case
from raigate import wrap
from raigate.explain.methods import AttributionConfig, get_method
from raigate.zoo import resnet20

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build(samples: int = 8, n_steps: int = 50, batch_size: int = 64) -> list[Benchmark]:
    torch.manual_seed(0)
    model = wrap(
        resnet20(num_classes=10),
        class_names=[str(i) for i in range(10)],
        input_shape=(3, 32, 32),
        mean=MEAN,
        std=STD,
    )
    x = torch.rand(samples, 3, 32, 32)
    target = torch.arange(samples) % 10
    baseline = torch.zeros_like(x)
    _, alphas_fn = approximation_parameters("gausslegendre")
    alphas = torch.tensor(alphas_fn(n_steps))
    # the batches Captum forms: whole steps of all samples, batch_size // samples steps each
    per = max(1, batch_size // samples)
    chunks = [alphas[i : i + per] for i in range(0, n_steps, per)]

    def raw() -> None:
        for a in chunks:
            scaled = baseline.unsqueeze(0) + a.view(-1, 1, 1, 1, 1) * (x - baseline).unsqueeze(0)
            scaled = scaled.reshape(-1, *x.shape[1:]).requires_grad_(True)
            out = model(scaled).gather(1, target.repeat(len(a)).view(-1, 1)).sum()
            torch.autograd.grad(out, scaled)

    config = AttributionConfig(n_steps=n_steps, batch_size=batch_size)
    method = get_method("integrated-gradients")

    def ours() -> None:
        method.attribute_with_delta(model, x, target, config)

    def captum() -> None:
        IntegratedGradients(model).attribute(
            x.clone().requires_grad_(True),
            baselines=baseline,
            target=target,
            n_steps=n_steps,
            internal_batch_size=batch_size,
            return_convergence_delta=True,
        )

    return [
        Benchmark(
            name="explain_ig[resnet20]",
            description=(
                f"Integrated Gradients, ResNet-20, {samples} images x {n_steps} steps = "
                f"{samples * n_steps} forward+backward passes in batches of "
                f"{min(per, n_steps) * samples}, CPU"
            ),
            reference="raw forward+backward passes",
            cases=[
                Case("raw forward+backward passes", raw),
                Case("raigate integrated-gradients (+delta)", ours),
                Case("captum IntegratedGradients (+delta)", captum),
            ],
            items=samples,
            rounds=15,
            warmup=2,
            params={
                "samples": samples,
                "n_steps": n_steps,
                "batch_size": batch_size,
                "net": "resnet20",
                "threads": torch.get_num_threads(),
            },
        )
    ]
