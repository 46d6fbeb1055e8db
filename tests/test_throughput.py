"""Throughput options (raigate.throughput) held to the float32 eager run's own uncertainty.

The gate for every option: CERTIFY with the option and CERTIFY in plain float32, on the
same images with the same noise seed, must agree within the Clopper-Pearson interval of
the float32 run. Derivation: the float32 count ``n_A`` of ``n`` draws gives a two-sided
``(1 - alpha)`` Clopper-Pearson interval ``[lo, hi]`` for ``p_A``; an option whose count
``n_A'`` lies in ``[n lo, n hi]`` moves ``p_A``'s estimate by less than the float32 run's
own sampling uncertainty at the level CERTIFY itself uses, so the option cannot be told
apart from the float32 classifier by this certificate. The certified radius is monotone
in the count, so the radius with the option must lie between the radii CERTIFY gives at
counts ``n lo`` and ``n hi`` (computed here with scipy, independently of raigate.stats).
The same noise seed gives the same noise draws, so any difference is the option's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import beta
from scipy.stats import norm as gaussian
from torch import nn

import raigate
from cli_helpers import assert_user_error, invoke
from raigate import ConfigError, wrap
from raigate.audit import robustness
from raigate.defenses import ABSTAIN, SmoothedClassifier
from raigate.defenses.smoothing import Certificate
from raigate.throughput import (
    FastModel,
    Throughput,
    accelerate,
    autotune_batch_size,
    cpu_has_native_bf16,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIGMA, N0, N, ALPHA = 0.25, 50, 2000, 0.001
SHAPE = (3, 8, 8)
CPU_BF16 = cpu_has_native_bf16()


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3),
    )  # fmt: skip
    with torch.no_grad():  # decisive enough that some images certify a radius > 0
        net[-1].weight.mul_(8.0)
    return net.eval()


@pytest.fixture(scope="module")
def model() -> raigate.Model:
    return wrap(_net(), class_names=["a", "b", "c"], input_shape=SHAPE, mean=0.5, std=0.25)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(1))


def _certify(m: raigate.Model, x: torch.Tensor, batch: int = 500) -> Certificate:
    return SmoothedClassifier(m, SIGMA, batch_size=batch, seed=3).certify(x, N0, N, ALPHA)


@pytest.fixture(scope="module")
def fp32(model: raigate.Model, images: torch.Tensor) -> Certificate:
    cert = _certify(model, images)
    # the gate is only meaningful where radii vary: some certify, some barely or not at all
    assert (cert.radius > 0.1).sum() >= 2 and (cert.count < N).all()
    return cert


def _radius(count: float, n: int) -> float:
    """CERTIFY's radius at ``count`` of ``n``: sigma Phi^-1 of the one-sided CP bound."""
    p_low = beta.ppf(ALPHA, count, n - count + 1) if count > 0 else 0.0
    return SIGMA * gaussian.ppf(p_low) if p_low > 0.5 else 0.0


def _band(count: int, n: int) -> tuple[int, int]:
    """Counts inside the two-sided (1 - alpha) Clopper-Pearson interval of count/n."""
    lo = beta.ppf(ALPHA / 2, count, n - count + 1) if count > 0 else 0.0
    hi = beta.ppf(1 - ALPHA / 2, count + 1, n - count) if count < n else 1.0
    return math.floor(n * lo), math.ceil(n * hi)


def _outside(ref: Certificate, got: Certificate) -> list[int]:
    """Images where ``got`` leaves the float32 run's Clopper-Pearson tolerance."""
    bad = []
    for i, (c_ref, c_got) in enumerate(zip(ref.count.tolist(), got.count.tolist(), strict=True)):
        lo, hi = _band(int(c_ref), ref.n)
        r = float(got.radius[i])
        both = ref.prediction[i] != ABSTAIN and got.prediction[i] != ABSTAIN
        if not (
            lo <= c_got <= hi
            and _radius(lo, ref.n) - 1e-9 <= r <= _radius(hi, ref.n) + 1e-9
            and (not both or ref.prediction[i] == got.prediction[i])
        ):
            bad.append(i)
    return bad


CPU_OPTIONS = [
    pytest.param(Throughput(channels_last=True), id="channels_last"),
    # a cold inductor compile of this net takes ~40 s on a busy 2-core machine; the default
    # run gates --compile on a linear model (test_compile_agrees_with_fp32)
    pytest.param(Throughput(compile=True), id="compile-conv", marks=pytest.mark.slow),
    pytest.param(
        Throughput(bf16=True),
        id="bf16-cpu",
        marks=pytest.mark.skipif(not CPU_BF16, reason="this CPU has no native bf16"),
    ),
    pytest.param(
        Throughput(channels_last=True, bf16=True),
        id="channels_last+bf16-cpu",
        marks=pytest.mark.skipif(not CPU_BF16, reason="this CPU has no native bf16"),
    ),
]


@pytest.mark.parametrize("options", CPU_OPTIONS)
def test_certify_with_an_option_agrees_with_fp32(
    options: Throughput, model: raigate.Model, images: torch.Tensor, fp32: Certificate
) -> None:
    fast = accelerate(model, options, device="cpu")
    assert isinstance(fast, FastModel) and fast.options == options
    # the wrapper answers as the audited model (a result names the model, not the wrapper)
    assert (fast.spec, fast.digest, fast.class_names) == (model.spec, model.digest,
                                                           model.class_names)  # fmt: skip
    assert fast.logits(images).dtype == torch.float32
    got = _certify(fast, images)
    assert _outside(fp32, got) == []
    # PREDICT's votes too, per class, within the float32 votes' interval
    ref_votes = SmoothedClassifier(model, SIGMA, batch_size=500, seed=5).counts(images, 400)
    votes = SmoothedClassifier(fast, SIGMA, batch_size=500, seed=5).counts(images, 400)
    for r, v in zip(ref_votes.flatten().tolist(), votes.flatten().tolist(), strict=True):
        lo, hi = _band(r, 400)
        assert lo <= v <= hi


def test_the_tolerance_catches_a_wrong_model(
    model: raigate.Model, images: torch.Tensor, fp32: Certificate
) -> None:
    """Power: the same network fed BGR instead of RGB (a layout bug of the kind a memory-
    format option could make) leaves the tolerance on some image."""
    flipped = wrap(
        nn.Sequential(_Flip(), _net()), class_names=["a", "b", "c"], input_shape=SHAPE,
        mean=0.5, std=0.25,
    )  # fmt: skip
    assert _outside(fp32, _certify(flipped, images))


class _Flip(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)


def test_gradient_attacks_with_options_match_fp32(model: raigate.Model) -> None:
    """FGSM's step through the fast model is float32's step: identical gradient signs
    except where a gradient component is rounding-size (channels_last reorders sums)."""
    x = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    y = model.predict(x)
    ref = raigate.attacks.fgsm(model, x, y, eps=4 / 255, norm="linf")
    got = raigate.attacks.fgsm(accelerate(model, Throughput(channels_last=True)), x, y,
                               eps=4 / 255, norm="linf")  # fmt: skip
    assert (ref != got).float().mean() < 1e-3


def test_compile_agrees_with_fp32() -> None:
    """--compile on the smallest model that still certifies a range of radii (inductor's
    compile time grows with the graph): CERTIFY and an FGSM step through the compiled
    forward and backward graphs, both against float32 eager."""
    torch.manual_seed(4)
    lin = nn.Linear(math.prod(SHAPE), 3)
    with torch.no_grad():
        lin.weight.mul_(6.0)
    plain = wrap(nn.Sequential(nn.Flatten(), lin), class_names=["a", "b", "c"],
                 input_shape=SHAPE, mean=0.5, std=0.25)  # fmt: skip
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(1))
    ref = _certify(plain, x)
    assert (ref.radius > 0.1).sum() >= 2 and (ref.count < N).all()
    fast = accelerate(plain, Throughput(compile=True), device="cpu")
    assert _outside(ref, _certify(fast, x)) == []
    y = plain.predict(x)
    ref = raigate.attacks.fgsm(plain, x, y, eps=4 / 255, norm="linf")
    assert (raigate.attacks.fgsm(fast, x, y, eps=4 / 255, norm="linf") != ref).float().mean() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_cuda_agrees_with_fp32(model: raigate.Model, images: torch.Tensor) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bf16")
    gpu = wrap(_net().cuda(), class_names=["a", "b", "c"], input_shape=SHAPE, mean=0.5, std=0.25)
    x = images.cuda()
    ref = _certify(gpu, x)
    got = _certify(accelerate(gpu, Throughput(bf16=True), device="cuda"), x)
    assert _outside(ref, got) == []


def test_autotuned_batch_is_measured_and_certify_with_it_agrees(
    model: raigate.Model, images: torch.Tensor, fp32: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    choice = autotune_batch_size(model, device="cpu", cap=4096)
    assert choice.size & (choice.size - 1) == 0 and 1 <= choice.size <= 4096
    # the choice is the fastest of the sizes it timed
    rates = {m["batch"]: m["images_per_s"] for m in choice.measured or []}
    assert choice.size == max(rates, key=lambda b: rates[b])
    # per-sample bytes by hand: normalization (x - mean, / std: 2 input-sized tensors), two
    # conv and two ReLU outputs, the pooled map (its flatten is a view) and the logits, plus
    # the noise batch and the image copies CERTIFY adds them to (2 input-sized tensors)
    pixels = math.prod(SHAPE)
    by_hand = 4 * (2 * pixels + 4 * 8 * 8 * 8 + 8 * 2 * 2 + 3 + 2 * pixels)
    assert choice.per_sample_bytes == by_hand
    # with a known budget no size past the largest power of two that fits is tried
    monkeypatch.setattr("raigate.throughput.available_memory", lambda: (by_hand * 300 * 4, "test"))
    small = autotune_batch_size(model, device="cpu", fraction=0.25)
    assert small.budget_bytes == by_hand * 300 and "<= 256" in small.how
    assert small.size <= 256 and max(m["batch"] for m in small.measured or []) <= 256
    # certify at the autotuned size agrees with fp32 at 500 per batch; the noise stream
    # does not depend on how it is chunked, and the tolerance is the same CP gate
    assert _outside(fp32, _certify(model, images, batch=choice.size)) == []


def test_refused_combinations_are_one_line_config_errors(
    model: raigate.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("raigate.throughput.cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="--bf16 needs a CUDA device or a CPU with native bf16"):
        accelerate(model, Throughput(bf16=True), device="cpu")
    monkeypatch.setattr("raigate.throughput._cxx_compiler", lambda: None)
    with pytest.raises(ConfigError, match="--compile needs a C\\+\\+ compiler"):
        accelerate(model, Throughput(compile=True), device="cpu")
    # black-box: the options act on a torch network, which a query-only model has not
    from raigate.models.base import Capabilities

    box = wrap(_net(), class_names=["a", "b", "c"], input_shape=SHAPE)
    box.capabilities = Capabilities(gradients=False)
    with pytest.raises(ConfigError, match=r"black-box .* --channels-last needs the network"):
        accelerate(box, Throughput(channels_last=True))
    assert accelerate(model, Throughput()) is model  # all off: the model itself


def test_robustness_check_records_the_options_and_agrees(tmp_path: Path) -> None:
    data = raigate.load_data("demo:test", limit=16)
    net = raigate.load_model("raigate.zoo:small_cnn", data=data, random_init=True)
    common = dict(eps=[2 / 255], pgd_steps=2, progress=False, smoothing_sigma=0.25,
                  certify_n=300, certify_n0=20, predict_n=20, eot_samples=2)  # fmt: skip
    fast_opts = {"channels_last": True, "smoothing_batch_size": "auto", "bf16": CPU_BF16}
    ref = robustness.run(net, data, robustness.RobustnessParams(**common))
    got = robustness.run(net, data, robustness.RobustnessParams(**common, **fast_opts))
    assert got.params["channels_last"] and got.params["smoothing_batch_size"] == "auto"
    tuned = got.params["smoothing_batch"]
    assert tuned["size"] >= 1 and tuned["per_sample_bytes"] > 0
    assert ref.params["smoothing_batch"] == {**tuned, "size": 1000, "how": "given",
        **dict.fromkeys(("per_sample_bytes", "budget_bytes", "available_bytes",
                         "memory_source", "measured"))}  # fmt: skip
    # every attack row inside the float32 row's Wilson interval, same samples
    for r, g in zip(ref.metrics["attacks"], got.metrics["attacks"], strict=True):
        assert (r["model"], r["attack"]) == (g["model"], g["attack"])
        assert r["ci_low"] <= g["accuracy"] <= r["ci_high"]
    assert got.metrics["certified_n"] == ref.metrics["certified_n"]
    for r, g in zip(ref.metrics["certification"], got.metrics["certification"], strict=True):
        lo, hi = _band(r["certified"], r["n"])
        assert lo <= g["certified"] <= hi


def test_cli_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = [
        "robustness", "--model", "raigate.zoo:small_cnn", "--random-init", "--data", "demo:test",
        "--limit", "8", "--eps", "2/255", "--pgd-steps", "1", "--device", "cpu",
    ]  # fmt: skip
    code, text = invoke(*base, "--smoothing-batch-size", "big", "--out", str(tmp_path / "a"))
    assert_user_error(code, text, "--smoothing-batch-size must be a positive integer or auto")
    code, text = invoke(*base, "--smoothing-batch-size", "0", "--out", str(tmp_path / "b"))
    assert_user_error(code, text, "--smoothing-batch-size")
    monkeypatch.setattr("raigate.throughput.cpu_has_native_bf16", lambda: False)
    code, text = invoke(*base, "--bf16", "--out", str(tmp_path / "c"))
    assert_user_error(code, text, "--bf16 needs a CUDA device")
    code, text = invoke(
        *base, "--channels-last", "--smoothing-sigma", "0.25", "--certify-n", "50",
        "--certify-n0", "10", "--predict-n", "10", "--eot-samples", "1",
        "--smoothing-batch-size", "auto", "--out", str(tmp_path / "d"),
    )  # fmt: skip
    assert code in (0, 1), text
    params = json.loads((tmp_path / "d" / "result.json").read_text())["params"]
    assert params["channels_last"] is True and params["compile"] is False
    assert params["smoothing_batch_size"] == "auto"
    assert params["smoothing_batch"]["size"] == 2 ** int(np.log2(params["smoothing_batch"]["size"]))
