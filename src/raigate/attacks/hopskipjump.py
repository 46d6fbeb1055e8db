"""HopSkipJump (Chen, Jordan & Wainwright, IEEE S&P 2020) through ART, under a per-image
query budget that is counted, not estimated.

HopSkipJump is decision-based: it only needs the predicted class, and it looks for the
*smallest* perturbation that changes it (binary searches to the decision boundary,
gradient-direction estimates from the signs of random probes, geometric step sizes). It has
no ε; accuracy at ε is read off afterwards: an image counts as broken at ε when the
attack found a misclassified point within ε of it.

ART runs the algorithm (``art.attacks.evasion.HopSkipJump``); raigate puts an *oracle*
between ART and the model, one image at a time. The oracle answers ART's queries with the
model's logits (forward passes only, so black-box models work), counts every image it is
sent, refuses the query that would exceed ``query_budget`` (ART's loop is stopped there, so
the count can never pass the budget) and keeps the closest misclassified point ART ever
showed it: every HopSkipJump iterate is such a point, so the result is at least as close as
ART's own output, and it is a point the model was actually seen to misclassify.

Budget to ART parameters (:func:`hsj_schedule`): ``init_eval`` (probes of the first
gradient estimate; HopSkipJump's schedule grows it as ``init_eval·sqrt(t+1)``) is a 40th
of the budget within [10, 100] (100 is the authors' default), ``max_eval`` caps one
estimate at a quarter of the budget (at most the authors' 10,000), and ``max_iter`` is the
most iterations the budget could pay for (each at least one binary search, one gradient
estimate and one step query). The budget, not ``max_iter``, ends a run.

The start point (HopSkipJump needs a misclassified point to walk from) is chosen here, not
by ART, whose draw is not seedable: the batch image closest in the norm that the model puts
in another class than the image's true one (its class is known from that image's own clean
query, and ART queries the start point again, counted), else uniform random images, one
query each, until one is misclassified (at most :data:`INIT_SIZE`): a model that puts all
noise in one class gives no random start for images of that class. ART's gradient probes
come from numpy's global generator, seeded for the call and restored afterwards, so the
same ``seed`` gives the same result.

>>> import torch
>>> from raigate import wrap
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
>>> model = wrap(net, class_names=["a", "b", "c"], input_shape=(3, 8, 8))
>>> x = torch.rand(2, 3, 8, 8)
>>> res = hop_skip_jump(model, x, model.predict(x), norm="l2", query_budget=300)
>>> bool(res.queries.max() <= 300), bool(res.success.all())
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from raigate.attacks.art_bridge import black_box_classifier
from raigate.attacks.gradient import Norm, check_norm, perturbation_norm
from raigate.attacks.query import QueryResult, check_budget
from raigate.errors import MissingDependencyError
from raigate.models.base import Model

INIT_SIZE = 100
"""Random images tried for a misclassified start point (ART's default ``init_size``)."""

__all__ = ["INIT_SIZE", "hop_skip_jump", "hsj_schedule"]


class _BudgetSpent(Exception):
    """Raised by the oracle instead of answering a query beyond the budget."""


class _Oracle:
    """The model as ART sees it while attacking one image (module docstring)."""

    def __init__(self, model: Model, x0: Tensor, y: int, norm: Norm, budget: int) -> None:
        self.model, self.x0, self.y, self.norm, self.budget = model, x0, y, norm, budget
        self.queries = 0
        self.best: Tensor | None = None
        self.best_distance = math.inf

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        if self.queries + len(x) > self.budget:
            raise _BudgetSpent
        out = self.model.logits(x.to(self.x0.device))
        self.queries += len(x)
        wrong = torch.nonzero(out.argmax(dim=1) != self.y).squeeze(1)
        if wrong.numel():
            cand = x[wrong].to(self.x0.device)
            dist = perturbation_norm(cand, self.x0.expand_as(cand), self.norm)
            j = int(dist.argmin())
            if float(dist[j]) < self.best_distance:
                self.best, self.best_distance = cand[j].clone(), float(dist[j])
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return self.logits(x).float().cpu().numpy()  # type: ignore[no-any-return]


def _search_steps(shape: Sequence[int], norm: Norm) -> int:
    """Queries of one of ART's binary searches to the boundary: it halves [0, 1] (L2) or
    [0, d_inf] down to ART's threshold theta = 0.01/sqrt(d) (L2) or 0.01/d (L-inf)."""
    d = math.prod(shape)
    theta = 0.01 / math.sqrt(d) if norm == "l2" else 0.01 / d
    return math.ceil(math.log2(1 / theta))


def hsj_schedule(query_budget: int, shape: Sequence[int], norm: Norm) -> dict[str, int]:
    """ART ``HopSkipJump`` parameters for a per-image budget (module docstring)."""
    budget = check_budget(query_budget)
    init_eval = min(max(budget // 40, 10), 100)
    max_eval = max(init_eval, min(10_000, budget // 4))
    search = _search_steps(shape, check_norm(norm))
    spent, iters = 4, 0  # the clean image, the start point, ART's two predictions of them
    while True:
        cost = min(int(init_eval * math.sqrt(iters + 1)), max_eval) + 1 + search
        if spent + cost > budget:
            break
        spent, iters = spent + cost, iters + 1
    return {"max_iter": max(iters, 1), "max_eval": max_eval, "init_eval": init_eval}


@contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """ART draws its probes from numpy's global generator: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _random_start(oracle: _Oracle, x0: Tensor, gen: torch.Generator) -> Tensor | None:
    for _ in range(INIT_SIZE):
        u = torch.rand((1, *x0.shape), generator=gen)
        if bool(oracle.logits(u).argmax(dim=1).item() != oracle.y):
            return u[0]
    return None


def _run_art(oracle: _Oracle, model: Model, start: Tensor, numpy_seed: int) -> None:
    """HopSkipJump from ``start`` until it finishes or the oracle refuses a query."""
    try:
        from art.attacks.evasion import HopSkipJump
    except ImportError as e:  # pragma: no cover - ART is a declared dependency
        raise MissingDependencyError("adversarial-robustness-toolbox", "hsj attack") from e
    x0 = oracle.x0.cpu()
    attack = HopSkipJump(
        black_box_classifier(model, oracle),
        norm=np.inf if oracle.norm == "linf" else 2,
        batch_size=256,
        verbose=False,
        init_size=INIT_SIZE,
        **hsj_schedule(oracle.budget, x0.shape, oracle.norm),
    )
    one_hot = np.eye(model.num_classes, dtype=np.float32)[[oracle.y]]
    with _numpy_seed(numpy_seed):
        attack.generate(x0[None].numpy(), y=one_hot, x_adv_init=start[None].cpu().numpy().copy())


def hop_skip_jump(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm = "l2",
    query_budget: int = 1000,
    seed: int = 0,
) -> QueryResult:
    """Untargeted HopSkipJump on each image of the batch (``y``: model class indices of the
    true labels), at most ``query_budget`` queries per image, the clean one included.
    ``x_adv`` is the closest misclassified point found (the clean image where none was);
    ``distance`` its size in ``norm`` (inf where none was found, 0 where the clean image is
    already misclassified)."""
    norm = check_norm(norm)
    budget = check_budget(query_budget)
    x = x.detach()
    if len(x) == 0:
        empty = torch.zeros(0, device=x.device)
        return QueryResult(x.clone(), empty.long(), empty.bool(), empty)
    gen = torch.Generator().manual_seed(int(seed))
    oracles = [_Oracle(model, x[i], int(y[i]), norm, budget) for i in range(len(x))]
    pred = torch.stack([o.logits(o.x0[None].cpu())[0] for o in oracles]).argmax(dim=1)
    for i, oracle in enumerate(oracles):
        numpy_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        if oracle.best is not None:
            continue  # misclassified already: the clean image is the answer
        others = torch.nonzero(pred.cpu() != oracle.y).squeeze(1).to(x.device)
        try:
            if others.numel():
                far = perturbation_norm(x[others], x[i].expand_as(x[others]), norm)
                start: Tensor | None = x[others[int(far.argmin())]]
            else:
                start = _random_start(oracle, x[i].cpu(), gen)
            if start is not None:
                _run_art(oracle, model, start, numpy_seed)
        except _BudgetSpent:
            pass
    found = [o.best is not None for o in oracles]
    x_adv = torch.stack([o.best if o.best is not None else o.x0 for o in oracles])
    return QueryResult(
        x_adv=x_adv.to(x.device),
        queries=torch.tensor([o.queries for o in oracles], dtype=torch.int64, device=x.device),
        success=torch.tensor(found, dtype=torch.bool, device=x.device),
        distance=torch.tensor(
            [o.best_distance for o in oracles], dtype=torch.float32, device=x.device
        ),
    )
