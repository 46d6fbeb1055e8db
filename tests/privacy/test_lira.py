"""LiRA and RMIA (raigate.privacy.lira) against closed forms and hand computations, their
power on a memorizing model, their calibration on scores that carry no membership, and the
``raigate privacy audit`` path that trains, saves and reuses reference models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn
from typer.testing import CliRunner

import raigate
from raigate.audit import privacy
from raigate.cli import app
from raigate.config import load_plan
from raigate.errors import ConfigError
from raigate.models.base import Normalize
from raigate.models.weights import save_safetensors
from raigate.privacy.lira import (
    lira_offline_scores,
    lira_online_scores,
    rmia_scores,
    scaled_logit,
)
from raigate.privacy.mia import score_attack
from raigate.privacy.reference import in_out_split
from raigate.training import fit
from raigate.zoo import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the statistic ---------------------------------------------------------------------------
def test_scaled_logit_is_log_odds_and_stays_finite_when_memorized() -> None:
    logits = torch.tensor([[1.0, 0.5, -2.0], [0.0, 3.0, 1.0], [60.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, 0])
    p = logits.double().softmax(1).gather(1, y[:, None]).squeeze(1)
    phi = scaled_logit(logits, y)
    assert phi[:2].tolist() == pytest.approx(torch.log(p / (1 - p))[:2].tolist(), rel=1e-12)
    # p_y rounds to 1 in float64 (1 - p = 0): the log-odds is 60 - log 2, not inf
    assert phi[2].item() == pytest.approx(60 - math.log(2), rel=1e-12)


# -- closed forms ----------------------------------------------------------------------------
def _exact_gaussians(k: int, n: int, mu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``k`` values per example whose sample mean is ``mu`` and sample std exactly 1."""
    z = rng.standard_normal((k, n))
    z = (z - z.mean(0)) / z.std(0, ddof=1)
    return z + mu


def test_online_and_offline_lira_agree_with_the_closed_form_on_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    k, n = 16, 2000
    mask = in_out_split(k, n, seed=0)
    ref = np.empty((k, 1, n))
    # IN models: N(2, 1) per example, OUT models: N(0, 1), placed into their mask slots
    order = np.argsort(~mask, axis=0, kind="stable")  # per example: its IN models first
    cols = np.arange(n)
    ref[order[: k // 2], 0, cols] = _exact_gaussians(k // 2, n, np.full(n, 2.0), rng)
    ref[order[k // 2 :], 0, cols] = _exact_gaussians(k // 2, n, np.zeros(n), rng)
    members = rng.random(n) < 0.5
    target = np.where(members, rng.normal(2, 1, n), rng.normal(0, 1, n))[None, :]
    for variance in ("per_example", "global"):
        online = lira_online_scores(target, ref, mask, variance=variance)  # type: ignore[arg-type]
        offline = lira_offline_scores(target, ref, mask, variance=variance)  # type: ignore[arg-type]
        # log N(phi; 2, 1) - log N(phi; 0, 1) = 2 phi - 2; log Pr[N(0, 1) <= phi]
        assert online == pytest.approx(2 * target[0] - 2, abs=1e-9)
        assert offline == pytest.approx(norm.logcdf(target[0]), abs=1e-9)
    # both are increasing in phi, so they rank examples alike: one ROC, whose AUC is
    # Pr[N(2,1) > N(0,1)] = Phi(2 / sqrt 2)
    on = score_attack("lira_online", online[members], online[~members], delta=1e-5)
    off = score_attack("lira_offline", offline[members], offline[~members], delta=1e-5)
    assert on.auc == pytest.approx(off.auc, abs=1e-12) and on.tpr == off.tpr
    assert on.auc == pytest.approx(norm.cdf(2 / math.sqrt(2)), abs=0.02)


def _rmia_by_hand(tp, rp, mask, pop, mode, a, gamma):  # type: ignore[no-untyped-def]
    """The definition, one pair at a time."""
    out = []
    for x in range(len(tp)):

        def prior(i: int) -> float:
            if mode == "online":
                return float(np.mean(rp[:, i]))
            outs = [rp[k, i] for k in range(len(rp)) if not mask[k, i]]
            return (1 + a) / 2 * float(np.mean(outs)) + (1 - a) / 2

        hits = sum((tp[x] / prior(x)) / (tp[z] / prior(z)) >= gamma for z in pop)
        out.append(hits / len(pop))
    return np.array(out)


@pytest.mark.parametrize(
    ("mode", "gamma"), [("online", 1.0), ("offline", 1.0), ("online", 2.0), ("offline", 1.5)]
)
def test_rmia_matches_a_pairwise_hand_computation(mode: str, gamma: float) -> None:
    rng = np.random.default_rng(3)
    k, n = 4, 12
    mask = in_out_split(k, n, seed=1)
    tp, rp = rng.uniform(0.05, 0.95, n), rng.uniform(0.05, 0.95, (k, n))
    pop = np.arange(4, n)
    got = rmia_scores(tp, rp, mask, pop, mode=mode, a=0.3, gamma=gamma)  # type: ignore[arg-type]
    assert got == pytest.approx(_rmia_by_hand(tp, rp, mask, pop, mode, 0.3, gamma), abs=1e-12)


def test_rmia_one_case_worked_by_hand() -> None:
    # two models; x=0 is the target; z = 1, 2. online p(.) = mean of the two models
    tp = np.array([0.9, 0.5, 0.2])
    rp = np.array([[0.6, 0.5, 0.4], [0.3, 0.5, 0.0]])
    mask = np.array([[True, False, True], [False, True, False]])
    # ratios: x 0.9/0.45 = 2; z1 0.5/0.5 = 1; z2 0.2/0.2 = 1 -> x beats both (2/1 >= 1)
    assert rmia_scores(tp, rp, mask, np.array([1, 2]))[0] == 1.0
    assert rmia_scores(tp, rp, mask, np.array([1, 2]), gamma=2.5)[0] == 0.0
    # offline, a = 0: p(x) = (p_OUT + 1) / 2; x OUT model 1 -> (0.3 + 1)/2 = 0.65, ratio 1.3846;
    # z1 OUT model 0 -> 0.75, ratio 0.6667; z2 OUT model 1 -> 0.5, ratio 0.4
    # x / z1 = 2.077, x / z2 = 3.46: with gamma 3 one of two
    got = rmia_scores(tp, rp, mask, np.array([1, 2]), mode="offline", a=0.0, gamma=3.0)
    assert got[0] == 0.5


# -- calibration: no membership signal, no epsilon -------------------------------------------
def test_on_random_scores_every_attack_bounds_epsilon_at_zero() -> None:
    rng = np.random.default_rng(7)
    k, q, n_targets, n_pop = 8, 2, 1000, 500
    n = n_targets + n_pop
    mask = in_out_split(k, n, seed=7)
    ref_phi = rng.normal(0, 1.5, (k, q, n))
    target_phi = rng.normal(0, 1.5, (q, n))  # the audited model ignores membership
    ref_p, target_p = 1 / (1 + np.exp(-ref_phi)), 1 / (1 + np.exp(-target_phi))
    members = np.arange(n_targets) < n_targets // 2
    scores = {
        "loss": np.log(target_p.mean(0)),
        "lira_online": lira_online_scores(target_phi, ref_phi, mask),
        "lira_offline": lira_offline_scores(target_phi, ref_phi, mask),
        "rmia": rmia_scores(target_p.mean(0), ref_p.mean(1), mask, np.arange(n_targets, n)),
    }
    each = 0.05 / len(scores)
    for name, s in scores.items():
        s = s[:n_targets]
        r = score_attack(name, s[members], s[~members], delta=1e-5, alpha=each)
        assert r.epsilon["eps_lower"] == 0.0, name
        lo, hi = r.auc_ci  # type: ignore[misc]
        assert lo <= 0.5 <= hi, name


# -- power: a model that memorizes -----------------------------------------------------------
def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 256), nn.ReLU(), nn.Linear(256, 10))


def _memorize(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(250):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return float((net(x).argmax(1) == y).float().mean())


def test_lira_finds_memorized_members_the_loss_attack_cannot_tell_from_easy_ones() -> None:
    # half the examples are easy (a class prototype plus noise: every model gets them right,
    # members or not), half carry a random label (only a model that trained on them fits
    # them). A low loss then flags easy non-members as readily as memorized members; LiRA
    # compares each example with models that did and did not see it.
    gen = torch.Generator().manual_seed(0)
    n_targets, n_pop, k = 200, 200, 8
    n = n_targets + n_pop
    protos = 3 * torch.randn(10, 24, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    easy = torch.arange(n) % 2 == 0
    x = torch.where(easy[:, None], protos[y], 0.0) + torch.randn(n, 24, generator=gen)
    members = torch.zeros(n, dtype=torch.bool)
    members[: n_targets // 2] = True

    target = _mlp(100)
    assert _memorize(target, x[members], y[members]) == 1.0
    mask = in_out_split(k, n, seed=0)
    ref_phi = np.empty((k, 1, n))
    for i in range(k):
        net = _mlp(i)
        assert _memorize(net, x[mask[i]], y[mask[i]]) == 1.0
        with torch.no_grad():
            ref_phi[i, 0] = scaled_logit(net(x), y).numpy()
    with torch.no_grad():
        logits = target(x)
        t_phi = scaled_logit(logits, y).numpy()[None, :]
        loss = F.cross_entropy(logits, y, reduction="none").double().numpy()
    m, nm = np.arange(n_targets // 2), np.arange(n_targets // 2, n_targets)
    res = {
        "loss": score_attack("loss", -loss[m], -loss[nm], delta=1e-5),
        "lira_online": score_attack(
            "lira_online", *_split(lira_online_scores(t_phi, ref_phi, mask), m, nm), delta=1e-5
        ),
        "lira_offline": score_attack(
            "lira_offline", *_split(lira_offline_scores(t_phi, ref_phi, mask), m, nm), delta=1e-5
        ),
    }
    tpr = {name: r.tpr["0.01"] for name, r in res.items()}
    print("TPR at 1% FPR:", tpr)
    assert tpr["lira_online"] >= tpr["loss"] + 0.25, tpr
    assert tpr["lira_offline"] >= tpr["loss"] + 0.25, tpr


def _split(s: np.ndarray, m: np.ndarray, nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return s[m], s[nm]


# -- the check and the CLI -------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    members = raigate.load_data("demo:train", limit=32, task="age")
    torch.manual_seed(0)
    net = small_cnn(num_classes=len(members.class_names))
    fit(net, members, normalize=Normalize([0.5] * 3, [0.5] * 3), epochs=20, lr=3e-3,
        batch_size=16, progress=False)  # fmt: skip
    return save_safetensors(net, tmp_path_factory.mktemp("lira") / "w.safetensors")


def _audit(weights: Path, out: Path, *extra: str) -> object:
    args = [
        "privacy", "audit", "--model", "raigate.zoo:small_cnn", "--weights", str(weights),
        "--mean", "0.5", "--std", "0.5", "--task", "age", "--members", "demo:train",
        "--members-limit", "32", "--non-members", "demo:test", "--limit", "32",
        "--attacks", "loss,lira_offline,rmia", "--reference-epochs", "3", "--device", "cpu",
        "--out", str(out), *extra,
    ]  # fmt: skip
    return CliRunner().invoke(app, args)


def _one_error_line(res: object) -> str:
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    lines = [ln for ln in res.output.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("raigate: error:"), lines
    return lines[0]


def test_cli_trains_saves_and_reuses_reference_models(weights: Path, tmp_path: Path) -> None:
    pop = ["--population", "demo:train", "--population-sample", "64"]
    res = _audit(weights, tmp_path / "a", *pop, "--reference-models", "2")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    text = res.output  # type: ignore[attr-defined]
    assert "reference models: 2 (trained" in text and "membership_roc.png" in text
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    rows = {r["attack"]: r for r in result["metrics"]["attacks"]}
    assert set(rows) == {"loss", "lira_offline", "rmia"}
    assert rows["rmia"]["reference_models"] == 2 and rows["rmia"]["queries"] == 2
    assert rows["loss"]["reference_models"] == 0
    assert result["metrics"]["alpha_per_attack"] == pytest.approx(0.05 / 3)
    best = result["params"]["strongest_attack"]
    finding = result["findings"][0]["message"]
    assert f"attack {best}" in finding
    if best != "loss":
        assert "(2 reference models, 2 queries per example)" in finding
    manifest = json.loads((tmp_path / "a" / "reference" / "reference.json").read_text())
    assert len(manifest["models"]) == 2 and manifest["recipe"]["epochs"] == 3
    # each pool example is IN for exactly one of the two models
    seen = [set(m["in_pool"]) for m in manifest["models"]]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == manifest["pool_size"]
    assert "reference/ref_000.safetensors" in result["artifacts"]

    again = _audit(weights, tmp_path / "b", *pop, "--reference", str(tmp_path / "a" / "reference"))
    assert again.exit_code == 0, again.output  # type: ignore[attr-defined]
    assert "reused from" in again.output  # type: ignore[attr-defined]
    rows_b = json.loads((tmp_path / "b" / "result.json").read_text())["metrics"]["attacks"]
    assert rows_b == result["metrics"]["attacks"]  # the same models give the same scores

    # other data than the manifest names: refused, one line, exit 2
    other = _audit(weights, tmp_path / "c", "--population", "demo:train", "--population-sample",
                   "48", "--reference", str(tmp_path / "a" / "reference"))  # fmt: skip
    assert "was trained with population" in _one_error_line(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no reference.json" in _one_error_line(_audit(weights, tmp_path / "d", *pop,
                                                         "--reference", str(empty)))  # fmt: skip
    assert "--population" in _one_error_line(_audit(weights, tmp_path / "e"))


def test_plan_accepts_the_reference_keys(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\n[data]\nspec = "demo:test"\n'
        '[checks.privacy]\nmembers = "demo:train"\nattacks = ["loss", "lira_online", "rmia"]\n'
        'population = "demo:train"\nreference_models = 4\nreference = "refs"\n'
        'rmia_mode = "offline"\nrmia_a = 0.5\nqueries = 1\nreference_optimizer = "sgd"\n'
    )
    plan = load_plan(path)
    params = privacy.PrivacyParams(**plan.checks["privacy"])
    assert params.reference == str(tmp_path / "refs") or Path(params.reference).name == "refs"
    assert (params.reference_models, params.rmia_mode, params.queries) == (4, "offline", 1)
    with pytest.raises(ConfigError, match="needs reference models"):
        privacy.validate(
            small_cnn_model(),
            raigate.load_data("demo:test", limit=8),
            privacy.PrivacyParams(members="demo:train", members_limit=8, attacks=["rmia"]),
        )


def small_cnn_model() -> raigate.Model:
    return raigate.load_model("raigate.zoo:small_cnn", data=raigate.load_data("demo:test", limit=8),
                              random_init=True)  # fmt: skip


@pytest.mark.parametrize(
    ("k", "fraction", "n_in"), [(8, 0.5, 4), (8, 0.25, 2), (2, 0.5, 1), (4, 0.1, 1)]
)
def test_every_example_is_in_for_the_same_number_of_models(
    k: int, fraction: float, n_in: int
) -> None:
    mask = in_out_split(k, 400, seed=5, fraction=fraction)
    assert (mask.sum(0) == n_in).all()
    assert abs(mask.sum(1).mean() - 400 * n_in / k) < 1e-9  # model sizes average n_in / k
