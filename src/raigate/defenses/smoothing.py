"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): a certifiable defense.

The smoothed classifier ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ²I)``, is provably
constant inside an L2 ball of radius ``σ·Φ⁻¹(p_A)`` around ``x`` whenever the top class
has probability ``p_A > 1/2`` (Cohen et al., Theorem 1). ``p_A`` is estimated by Monte
Carlo, so every answer comes with a failure probability ``alpha``:

* **PREDICT** draws ``n`` noisy copies, counts the top two classes ``n_A, n_B`` and returns
  the top class only if a two-sided binomial test of ``n_A`` vs ``n_B`` at 1/2 rejects at
  ``alpha``; otherwise it abstains (``-1``).
* **CERTIFY** picks the class from ``n0`` *selection* draws, then counts it in ``n`` fresh
  *estimation* draws, takes the one-sided ``(1 - alpha)`` Clopper-Pearson lower bound
  ``p_A_lower`` (statsmodels, through :func:`raigate.stats.clopper_pearson_lower`) and
  certifies radius ``σ·Φ⁻¹(p_A_lower)`` if ``p_A_lower > 1/2``, else abstains. Because the
  two draws are independent, the selection cannot inflate the bound.

Noise is streamed in batches of ``batch_size`` draws (several images share a batch when
``n`` is small), so memory stays O(batch) even at ``n = 100,000``; ART materializes all
``n`` copies at once (about 1.2 GB per 3x32x32 image at that ``n``).

``SmoothedClassifier`` is itself a raigate ``Model`` (STYLE: a defense returns the
interface it wrapped): its ``logits(x)`` are ``log E_δ[softmax f(x + δ)]`` over
``eot_samples`` fresh draws per call, differentiable, which is the expectation-over-
transformation objective an adaptive attack on the smoothed classifier needs (Athalye et
al. 2018; Salman et al. 2019, "Provably robust deep learning via adversarially trained
smoothed classifiers"). Attacks on it therefore see the noise, not the bare base model.

>>> import torch
>>> from raigate import wrap
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> model = wrap(net, class_names=["a", "b"], input_shape=(1, 2, 2))
>>> smoothed = SmoothedClassifier(model, sigma=0.25, batch_size=256)
>>> cert = smoothed.certify(torch.rand(3, 1, 2, 2), n0=10, n=200, alpha=0.001)
>>> cert.prediction.shape, cert.radius.shape
(torch.Size([3]), torch.Size([3]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom, norm
from torch import Tensor, nn

from raigate import progress as _progress
from raigate.data.base import Dataset
from raigate.errors import ConfigError
from raigate.models.base import Capabilities, Model, require_white_box
from raigate.stats import clopper_pearson_lower
from raigate.training import Augment, FitReport, fit

ABSTAIN = -1
"""The class index PREDICT and CERTIFY return when they abstain."""

__all__ = [
    "ABSTAIN",
    "Certificate",
    "SmoothedClassifier",
    "binomial_p_value",
    "certified_radius",
    "clopper_pearson_lower",
    "gaussian_noise",
    "predict_from_counts",
    "train_noise",
]


def binomial_p_value(n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
    """Two-sided exact binomial test p-value of ``n_a`` successes in ``n_a + n_b`` trials
    against 1/2 (Cohen et al.'s PREDICT). For the symmetric null it is
    ``min(1, 2·P(X <= min(n_a, n_b)))``."""
    a = np.asarray(n_a, dtype=np.int64)
    b = np.asarray(n_b, dtype=np.int64)
    return np.minimum(1.0, 2.0 * binom.cdf(np.minimum(a, b), a + b, 0.5))


def certified_radius(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """``σ·Φ⁻¹(p_A_lower)`` where ``p_A_lower > 1/2``, else 0 (Cohen et al., Theorem 1)."""
    p = np.asarray(p_lower, dtype=np.float64)
    return np.where(p > 0.5, sigma * norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


def predict_from_counts(counts: Tensor, alpha: float) -> Tensor:
    """Cohen et al.'s PREDICT decision from per-class vote counts ``[B, K]``: the top class
    where the binomial test of top vs runner-up rejects at ``alpha``, else ``ABSTAIN``."""
    top2 = counts.topk(2, dim=1)
    n_a = top2.values[:, 0].cpu().numpy()
    n_b = top2.values[:, 1].cpu().numpy()
    ok = torch.as_tensor(binomial_p_value(n_a, n_b) <= alpha, device=counts.device)
    return torch.where(ok, top2.indices[:, 0], torch.full_like(top2.indices[:, 0], ABSTAIN))


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer per input: ``prediction`` (class index or ``ABSTAIN``), ``radius``
    (L2, pixel space; 0 when abstaining), ``p_lower`` (the Clopper-Pearson bound on
    ``p_A``), ``count`` (``n_A`` among the ``n`` estimation draws) and the ``n`` used."""

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    count: Tensor
    n: int


def gaussian_noise(sigma: float) -> Augment:
    """The augmentation of Cohen et al.'s training recipe: ``x + N(0, σ²)`` on pixels, not
    clipped (the certificate is about exactly this noise), for :func:`raigate.training.fit`."""

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        return x + sigma * noise.to(x.device)

    return augment


class _NoisyExpectation(nn.Module):
    """``log mean_j softmax(f(x + δ_j))`` over ``samples`` fresh draws: differentiable."""

    def __init__(self, base: Model, sigma: float, samples: int, seed: int) -> None:
        super().__init__()
        self.base = base
        self.sigma = sigma
        self.samples = samples
        self.seed = seed
        self._gens: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            self._gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gens[key]

    def forward(self, x: Tensor) -> Tensor:
        b, m = x.shape[0], self.samples
        xs = x.repeat_interleave(m, dim=0)
        noise = torch.randn(xs.shape, generator=self.generator(x.device), device=x.device)
        logp = self.base.logits(xs + self.sigma * noise.to(xs.dtype)).log_softmax(dim=1)
        # log of the mean probability, computed stably in log space
        return torch.logsumexp(logp.view(b, m, -1), dim=1) - math.log(m)


class SmoothedClassifier(Model):
    """Cohen et al. (2019)'s smoothed classifier around ``model`` with noise level ``sigma``.

    ``predict`` and ``certify`` are Cohen's PREDICT and CERTIFY; ``counts`` gives the raw
    votes. ``logits`` (the ``Model`` interface) is the EOT estimate over ``eot_samples``
    draws, for attacks. ``batch_size`` is the number of noisy images per forward pass.
    ``seed`` fixes the noise stream, so the same calls give the same answers.
    """

    def __init__(
        self,
        model: Model,
        sigma: float,
        *,
        eot_samples: int = 8,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"--smoothing-sigma must be > 0, got {sigma}")
        if eot_samples < 1:
            raise ConfigError(f"--eot-samples must be >= 1, got {eot_samples}")
        if batch_size < 1:
            raise ConfigError(f"--smoothing-batch-size must be >= 1, got {batch_size}")
        caps = model.capabilities
        super().__init__(
            _NoisyExpectation(model, float(sigma), int(eot_samples), seed),
            class_names=model.class_names,
            input_shape=model.input_shape,
            spec=f"smoothed(sigma={sigma:g}):{model.spec}",
            random_init=model.random_init,
            digest=model.digest,
            files=model.files,
            capabilities=Capabilities(
                gradients=caps.gradients,
                deterministic=False,
                batchnorm=caps.batchnorm,
                conv=caps.conv,
            ),
            source="smoothed",
        )
        self.sigma = float(sigma)
        self.eot_samples = int(eot_samples)
        self.batch_size = int(batch_size)
        self.seed = seed

    @property
    def base(self) -> Model:
        """The wrapped base classifier ``f``."""
        return self.net.base  # type: ignore[no-any-return]

    # -- Monte Carlo votes ------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Restart the shared noise stream (``counts`` without ``seeds``, and the EOT
        ``logits``) from ``seed``: the robustness check does it per batch, so a batch's
        draws do not depend on the batches before it (or on which process ran them)."""
        self.net.seed = seed  # type: ignore[union-attr]
        self.net._gens.clear()  # type: ignore[union-attr]

    @torch.inference_mode()
    def counts(
        self,
        x: Tensor,
        n: int,
        *,
        progress: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> Tensor:
        """Votes ``[B, K]`` (int64) of the base classifier on ``n`` noisy copies of each of
        the ``B`` images in ``x``, streamed ``batch_size`` draws at a time. With ``seeds``
        (one per image) each image's noise comes from its own generator, so its votes do
        not depend on the other images, their order or the process; else from the shared
        stream (:meth:`reseed`)."""
        if n < 1:
            raise ConfigError(f"the number of noise draws must be >= 1, got {n}")
        x = x.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        b, k = x.shape[0], self.num_classes
        if seeds is not None and len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for {b} images")
        shared = self.net.generator(x.device)  # type: ignore[operator]
        own = (
            None
            if seeds is None
            else [torch.Generator(device=x.device).manual_seed(int(s)) for s in seeds]
        )
        votes = torch.zeros(b * k, dtype=torch.int64, device=x.device)
        total = b * n
        with _progress.bar(total, "noise draws", "draws", show=progress) as bar:
            for start in range(0, total, self.batch_size):
                stop = min(start + self.batch_size, total)
                first, last = start // n, (stop - 1) // n
                shape = (stop - start, *x.shape[1:])
                if own is None:
                    batch = torch.randn(shape, generator=shared, device=x.device, dtype=x.dtype)
                else:  # each image's draws from its own stream, in order
                    batch = torch.cat(
                        [
                            torch.randn(
                                (min(stop, (j + 1) * n) - max(start, j * n), *x.shape[1:]),
                                generator=own[j],
                                device=x.device,
                                dtype=x.dtype,
                            )
                            for j in range(first, last + 1)
                        ]
                    )
                batch.mul_(self.sigma)
                if first == last:  # one image: broadcast instead of gathering copies
                    batch.add_(x[first])
                    img = None
                else:
                    img = torch.arange(start, stop, device=x.device) // n
                    batch.add_(x[img])
                pred = self.base.logits(batch).argmax(dim=1)
                if img is None:
                    votes[first * k : (first + 1) * k] += torch.bincount(pred, minlength=k)
                else:
                    votes += torch.bincount(img * k + pred, minlength=b * k)
                bar.update(stop - start)
        return votes.view(b, k)

    def predict(  # type: ignore[override]
        self, x: Tensor, n: int = 100, alpha: float = 0.001, *, progress: bool = False
    ) -> Tensor:
        """Cohen et al.'s PREDICT: class indices ``[B]``, ``ABSTAIN`` (-1) where the top
        class is not significantly ahead of the runner-up at level ``alpha``."""
        _check_alpha(alpha)
        return predict_from_counts(self.counts(x, n, progress=progress), alpha)

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        *,
        progress: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> Certificate:
        """Cohen et al.'s CERTIFY on each image of ``x``: ``n0`` selection draws pick the
        class, ``n`` independent estimation draws bound its probability from below. With
        ``seeds`` (one per image) each image's selection and estimation noise come from
        two streams of its own (see :meth:`counts`): its certificate is the same in any
        batch, order or process."""
        _check_alpha(alpha)
        if n0 < 1 or n < 1:
            raise ConfigError(f"--certify-n0 and --certify-n must be >= 1, got {n0}, {n}")
        if n0 > n:
            raise ConfigError(f"--certify-n0 ({n0}) must not exceed --certify-n ({n})")
        pick = est = None
        if seeds is not None:
            from raigate.parallel import item_seed

            pick = [item_seed(int(s), "selection") for s in seeds]
            est = [item_seed(int(s), "estimation") for s in seeds]
        selected = self.counts(x, n0, progress=progress, seeds=pick).argmax(dim=1)
        votes = self.counts(x, n, progress=progress, seeds=est)
        n_a = votes.gather(1, selected.view(-1, 1)).squeeze(1)
        p_lower = clopper_pearson_lower(n_a.cpu().numpy(), n, alpha)
        radius = certified_radius(p_lower, self.sigma)
        certified = torch.as_tensor(p_lower > 0.5, device=selected.device)
        return Certificate(
            prediction=torch.where(certified, selected, torch.full_like(selected, ABSTAIN)),
            radius=torch.as_tensor(radius, dtype=torch.float64),
            p_lower=torch.as_tensor(p_lower, dtype=torch.float64),
            count=n_a.cpu(),
            n=n,
        )


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise ConfigError(f"--alpha must lie in (0, 0.5), got {alpha}")


def train_noise(
    model: Model,
    data: Dataset,
    *,
    sigma: float,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> FitReport:
    """Train ``model.net`` in place with Gaussian noise augmentation (Cohen et al.'s
    recipe): smoothing a model that never saw noise mostly abstains, because its base
    predictions under noise are near chance. ``data`` labels must be in the model's class
    order (see :func:`raigate.defenses.harden.harden_smoothing`, which aligns them)."""
    require_white_box(model, "noise training for smoothing")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"--sigma must be > 0, got {sigma}")
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    return fit(
        model.net,
        data,
        normalize=model.transform,  # channel order, scale, mean/std, layout as deployed
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        augment=gaussian_noise(sigma),
        device=device,
        progress=progress,
    )
