"""Control for docs/faces_real.md (b): the same 2-epoch fine-tune as ``harden fairness``
(Adam 1e-3, batch 64, seed 0) with uniform weights, so the gain of reweighting is separated
from the gain of more epochs. Run in the experiment's folder (``dp2/``, ``members/``), then
``raigate fairness --model h2-control/model.json ...``."""

import copy
from pathlib import Path

import raigate
from raigate.audit.evaluate import prepare
from raigate.defenses.harden import labels_in_model_order, save_variant
from raigate.training import fit

model = raigate.load_model("dp2/baseline/model.json")
data = raigate.load_data("fairface:members:train", task="gender")
view = labels_in_model_order(model, prepare(model, data), None)
trained = copy.deepcopy(model)
fit(trained.net, view, normalize=trained.transform, epochs=2, lr=1e-3, batch_size=64, seed=0,
    progress=False)  # fmt: skip
print(save_variant(model, trained, Path("h2-control"), "model"))
