"""Privacy: DP-SGD retraining to a target epsilon, its ledger, and measured leakage.

* :func:`train_private` / :func:`run_private_training` retrain a network with DP-SGD
  (Opacus), fold or replace BatchNorm first, write the ledger, checkpoints and a model spec;
* :mod:`raigate.privacy.mia` attacks the result (loss threshold, ART black box) and turns
  the attack into an empirical epsilon lower bound; :mod:`raigate.privacy.lira` adds LiRA
  and RMIA, calibrated by reference models (:func:`train_reference`);
  :mod:`raigate.privacy.canaries` runs the one-run canary audit inside training;
* :func:`check_loader` tells an Opacus user, in one line, whether a DataLoader's sampling
  is the Poisson sampling the accountant charges (a ``WeightedRandomSampler`` is not).

>>> from raigate.privacy import epsilons_for
>>> eps = epsilons_for([(1.0, 0.01, 1000)], delta=1e-5)  # sigma, q, steps
>>> sorted(eps), eps["prv"] < eps["rdp"]
(['prv', 'rdp'], True)
"""

from __future__ import annotations

from raigate.privacy.bookkeeping import BookKeeping, bookkeeping_optimizer
from raigate.privacy.canaries import CanaryAudit, audit_canaries, eps_lower_bound
from raigate.privacy.fold import fold_batchnorm, private_net, replace_batchnorm
from raigate.privacy.ledger import Ledger, epsilons_for
from raigate.privacy.lira import lira_offline_scores, lira_online_scores, rmia_scores
from raigate.privacy.preflight import Problem
from raigate.privacy.reference import (
    ReferenceRecipe,
    ReferenceSet,
    build_pool,
    load_reference,
    reference_attack_scores,
    train_reference,
)
from raigate.privacy.reference_dp import dp_recipe_from
from raigate.privacy.sampler import SamplerCheck, check_loader
from raigate.privacy.train import DPParams, PrivateTraining, run_private_training, train_private

__all__ = [
    "BookKeeping",
    "CanaryAudit",
    "DPParams",
    "Ledger",
    "PrivateTraining",
    "Problem",
    "ReferenceRecipe",
    "ReferenceSet",
    "SamplerCheck",
    "audit_canaries",
    "bookkeeping_optimizer",
    "build_pool",
    "check_loader",
    "dp_recipe_from",
    "eps_lower_bound",
    "epsilons_for",
    "fold_batchnorm",
    "lira_offline_scores",
    "lira_online_scores",
    "load_reference",
    "private_net",
    "reference_attack_scores",
    "replace_batchnorm",
    "rmia_scores",
    "run_private_training",
    "train_private",
    "train_reference",
]
