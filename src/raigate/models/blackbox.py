"""Models that can only be queried: an ONNX session, a served model behind a Python client.

A black-box model answers forward passes and nothing else: no input gradients, no layers to
fold or fine-tune. :class:`QueryNet` turns such a predictor into the ``net`` of a raigate
:class:`~raigate.models.base.Model`, so evaluate, fairness, smoothing, score- and
decision-based attacks, perturbation explanations and membership scoring run on it
unchanged, while ``Model.capabilities.gradients`` is False and every check records
``mode: black-box``.

The predictor takes a float32 numpy batch in the model's own layout (after the deployed
preprocessing) and returns scores ``[B, K]``; ``outputs`` says whether those are logits or
probabilities. The net returns log-probabilities for probability outputs (``log p``, floored
at 1e-30) and the logits as they are otherwise: either way ``log_softmax`` of the result is
the model's log-probability, which is all attacks and metrics use. ``queries`` counts the
images sent, so attacks can report the query budget they spent.

>>> import numpy as np, torch
>>> def predict(x):  # a "served" linear model: probabilities for 2 classes
...     z = x.reshape(len(x), -1).mean(1, keepdims=True)
...     p1 = 1 / (1 + np.exp(-(z - 0.5) * 10))
...     return np.concatenate([1 - p1, p1], axis=1)
>>> net = QueryNet(predict, outputs="probs")
>>> out = net(torch.full((3, 1, 2, 2), 0.9))
>>> out.shape, bool(out.exp().sum(1).allclose(torch.ones(3))), net.queries
(torch.Size([3, 2]), True, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from raigate.errors import ModelLoadError

OutputKind = Literal["logits", "probs"]
PROB_FLOOR = 1e-30
"""``log`` of a probability is taken at no less than this, so a hard 0 stays finite."""

__all__ = ["PROB_FLOOR", "OutputKind", "QueryNet", "looks_like_probabilities"]


def looks_like_probabilities(scores: np.ndarray, tol: float = 1e-3) -> bool:
    """Rows in [0, 1] that sum to 1 (within ``tol``): a softmax output, not logits.

    Logits almost never satisfy this on random inputs, and a model whose logits happen to
    do so is equivalent to one that outputs probabilities up to a constant shift anyway.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or not np.all(np.isfinite(s)):
        return False
    return bool(s.min() >= -tol and s.max() <= 1 + tol and np.allclose(s.sum(1), 1.0, atol=tol))


class QueryNet(nn.Module):
    """A numpy predictor as a forward-only ``nn.Module``.

    ``static_batch``: the predictor accepts exactly this many images at once (a graph
    exported with a fixed batch): larger batches are sent in chunks, the last one
    zero-padded, and padding rows are discarded (and not counted as queries). ``None``:
    any batch size, sent in chunks of ``max_batch``. ``channels_last`` makes the predictor
    receive NHWC. The result is a tensor without gradient history, on the input's device.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        outputs: OutputKind = "logits",
        static_batch: int | None = None,
        max_batch: int = 256,
        channels_last: bool = False,
        name: str = "predictor",
    ) -> None:
        super().__init__()
        if outputs not in ("logits", "probs"):
            raise ModelLoadError(f"outputs must be 'logits' or 'probs', got {outputs!r}")
        self.predict = predict
        self.outputs: OutputKind = outputs
        self.static_batch = static_batch
        self.max_batch = static_batch or max_batch
        self.channels_last = channels_last
        self.name = name
        self.queries = 0

    def _call(self, chunk: np.ndarray, n: int) -> np.ndarray:
        out = np.asarray(self.predict(np.ascontiguousarray(chunk)))
        if out.ndim != 2 or out.shape[0] != len(chunk):
            raise ModelLoadError(
                f"{self.name} returned shape {list(out.shape)} for a batch of {len(chunk)}; "
                "expected scores of shape [batch, classes]"
            )
        return out[:n]

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32)
        if self.channels_last:
            arr = arr.permute(0, 2, 3, 1)
        a = arr.contiguous().numpy()
        outs = []
        for start in range(0, len(a), self.max_batch):
            chunk = a[start : start + self.max_batch]
            n = len(chunk)
            if self.static_batch is not None and n < self.static_batch:
                pad = np.zeros((self.static_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs.append(self._call(chunk, n))
            self.queries += n
        scores = torch.from_numpy(np.concatenate(outs).astype(np.float32, copy=False))
        if self.outputs == "probs":
            scores = scores.clamp_min(PROB_FLOOR).log()
        return scores.to(x.device)
