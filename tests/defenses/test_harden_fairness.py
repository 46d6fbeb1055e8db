"""``harden_fairness``: group-balanced weights and sampler against closed forms and torch's
own ``WeightedRandomSampler``, Group DRO's update against Sagawa et al.'s formula, group
thresholds against fairlearn's ``ThresholdOptimizer.predict``, and the variants through
``load_model``, the checks and a signed audit plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom

import raigate
from raigate.audit import evaluate, fairness
from raigate.data.base import Dataset
from raigate.defenses import GroupDRO, harden_fairness
from raigate.defenses.fairness import positive_scores, weighted_cross_entropy
from raigate.defenses.groups import balanced_sampler, balanced_weights, groups_of
from raigate.defenses.thresholds import GroupThresholds, fit_thresholds
from raigate.errors import ConfigError
from raigate.models.loaders import write_model_spec
from raigate.models.weights import save_safetensors
from raigate.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TensorData(Dataset):
    """In-memory images with attributes, for constructed training problems."""

    def __init__(self, x: torch.Tensor, labels: np.ndarray, attrs: pd.DataFrame) -> None:
        super().__init__(
            spec="tensor:test", labels=labels, class_names=["neg", "pos"], attributes=attrs,
            native_size=tuple(x.shape[-2:]), channels=x.shape[1],
        )  # fmt: skip
        self._x = x

    def _read(self, row: int, size: tuple[int, int] | None) -> torch.Tensor:
        return self._x[row]

    def _manifest_files(self, rows: np.ndarray) -> list[dict[str, Any]]:
        return []


@pytest.fixture(scope="module")
def saved(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's trained demo model saved as weights + a model spec (reloadable)."""
    folder = tmp_path_factory.mktemp("base")
    weights = save_safetensors(trained.net, folder / "base.safetensors")
    return write_model_spec(
        folder / "base.json", factory="raigate.zoo:small_cnn", kwargs={"num_classes": 2},
        weights=weights, class_names=list(trained.class_names), input_shape=[3, 32, 32],
        mean=[0.5] * 3, std=[0.5] * 3,
    )  # fmt: skip


# -- reweighting and resampling -------------------------------------------------------------
def test_reweighting_gives_every_group_the_same_total_weight() -> None:
    data = raigate.load_data("demo:train", limit=500)
    for by_label in (False, True):
        g = groups_of(data, "race+gender", by_label=by_label)
        w = balanced_weights(g.codes, len(g.names))
        sizes = np.bincount(g.codes)
        present = int((sizes > 0).sum())
        totals = np.bincount(g.codes, weights=w)
        # closed form: n / G per group, mean weight 1, each sample 1 / (G n_g) * n
        np.testing.assert_allclose(totals[sizes > 0], len(w) / present)
        assert w.mean() == pytest.approx(1.0)
        np.testing.assert_allclose(w, len(w) / (present * sizes[g.codes]))
    assert len(groups_of(data, "race+gender", by_label=True).names) > len(g.names) // 2

    # the weighted loss of a batch is mean_i w_i CE_i, CE by hand from log-softmax
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    pos = torch.tensor([3, 0, 7, 7, 1, 499])
    ce = -np.log(np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True))
    expected = np.mean(w[pos.numpy()] * ce[np.arange(6), y.numpy()])
    got = weighted_cross_entropy(w)(logits, y, pos).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_resampling_draws_groups_in_equal_proportion() -> None:
    data = raigate.load_data("demo:train", limit=1000)
    g = groups_of(data, "race")
    sizes = np.bincount(g.codes)
    assert sizes.max() > 4 * sizes.min()  # Southeast Asian is 4% of demo:train
    w = balanced_weights(g.codes, len(g.names))
    n_draws = 14_000
    draws = balanced_sampler(w, seed=5, num_samples=n_draws)(0)
    counts = np.bincount(g.codes[draws], minlength=len(g.names))
    # each of the G groups is drawn with probability 1/G: counts ~ Binomial(N, 1/G)
    p = 1 / len(g.names)
    lo, hi = binom.ppf([1e-4, 1 - 1e-4], n_draws, p)
    assert all(lo <= c <= hi for c in counts), counts
    # the same draw as torch's own WeightedRandomSampler with that generator
    ref = torch.utils.data.WeightedRandomSampler(
        w.tolist(), n_draws, replacement=True, generator=torch.Generator().manual_seed(5)
    )
    assert draws == list(ref)
    sampler = balanced_sampler(w, seed=5)
    assert sampler(1) == sampler(1) != sampler(0)  # seeded per epoch


# -- Group DRO -------------------------------------------------------------------------------
def test_group_dro_step_matches_the_closed_form() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 3, generator=gen)
    y = torch.randint(0, 3, (10,), generator=gen)
    codes = np.array([0, 1, 1, 2, 0, 0, 1, 2, 2, 0, 3, 3])  # group 3: not in the batch
    pos = torch.arange(10)
    dro = GroupDRO(codes, 4, eta=0.5)
    q0 = dro.q.numpy().copy()
    loss = dro(logits, y, pos)

    lp = logits.numpy() - np.log(np.exp(logits.numpy()).sum(1, keepdims=True))
    ce = -lp[np.arange(10), y.numpy()]
    lg = np.array(
        [ce[codes[:10] == k].mean() if (codes[:10] == k).any() else 0.0 for k in range(4)]
    )
    q1 = q0 * np.exp(0.5 * lg)
    q1 /= q1.sum()  # Sagawa et al. 2020, Algorithm 1
    np.testing.assert_allclose(dro.q.numpy(), q1, rtol=1e-6)
    assert loss.item() == pytest.approx(float(q1 @ lg), rel=1e-5)
    assert q0.tolist() == [0.25] * 4


def test_group_dro_moves_weight_to_the_harder_group() -> None:
    # two groups of 1x2x2 images: group "easy" is separable by the first pixel, group "hard"
    # has random labels (no model can fit them): q must move toward "hard"
    rng = np.random.default_rng(0)
    n = 256
    group = np.array(["easy", "hard"])[np.arange(n) % 2]
    y = rng.integers(0, 2, n)
    x = torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 0.2
    easy = group == "easy"
    x[torch.as_tensor(easy), 0, 0, 0] = torch.as_tensor(y[easy] * 0.8 + 0.1, dtype=torch.float32)
    data = TensorData(x, y, pd.DataFrame({"g": group}))
    g = groups_of(data, "g")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    dro = GroupDRO(g.codes, 2, eta=0.2)
    fit(net, data, epochs=4, lr=0.05, batch_size=32, progress=False, objective=dro,
        on_epoch=lambda _e: dro.end_epoch())  # fmt: skip
    hard = g.names.index("hard")
    assert len(dro.q_history) == 4
    qs = [q[hard] for q in dro.q_history]
    assert qs[-1] > 0.7 and qs == sorted(qs), qs  # monotone toward the hard group


# -- group thresholds vs fairlearn -----------------------------------------------------------
def _synthetic_scores(n: int = 1500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    groups = rng.choice(np.array(["a", "b", "c"], dtype=object), n, p=[0.5, 0.3, 0.2])
    y = rng.integers(0, 2, n)
    shift = np.select([groups == "a", groups == "b"], [1.5, 0.7], 0.3)
    scores = 1 / (1 + np.exp(-(np.where(y == 1, shift, -shift) + rng.standard_normal(n))))
    return scores, y, groups


@pytest.mark.parametrize("constraint", ["equalized_odds", "demographic_parity"])
def test_thresholds_predict_as_fairlearn_does(constraint: str) -> None:
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Identity(ClassifierMixin, BaseEstimator):
        """Test-local prefit estimator: predict_proba's column 1 is the feature itself."""

        def fit(self, X: Any, y: Any = None) -> Any:
            return self

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def predict_proba(self, X: Any) -> np.ndarray:
            s = np.asarray(X)[:, 0]
            return np.column_stack([1 - s, s])

    scores, y, groups = _synthetic_scores()
    ref = ThresholdOptimizer(
        estimator=Identity(), constraints=constraint, prefit=True, predict_method="predict_proba"
    ).fit(scores[:, None], y, sensitive_features=groups)
    ours = fit_thresholds(
        scores, y, groups, attributes=("g",), constraint=constraint, positive=1, negative=0,
        seed=11,
    )  # fmt: skip
    # stored as JSON numbers and read back: no fairlearn object, no pickle
    ours = GroupThresholds.from_dict(json.loads(json.dumps(ours.to_dict())))
    pmf = ref._pmf_predict(scores[:, None], sensitive_features=groups)[:, 1]
    np.testing.assert_array_equal(ours.positive_probability(scores, groups), pmf)
    expected = ref.predict(scores[:, None], sensitive_features=groups, random_state=11)
    got = ours.predict_scores(scores, groups, np.arange(len(scores)))
    np.testing.assert_array_equal(got, expected)
    # batches in any order draw the same uniforms: the whole-data prediction, again
    fresh = GroupThresholds.from_dict(ours.to_dict())
    order = np.random.default_rng(0).permutation(len(scores))
    for chunk in np.array_split(order, 7):
        np.testing.assert_array_equal(
            fresh.predict_scores(scores[chunk], groups[chunk], chunk), expected[chunk]
        )
    # and the constraint holds in expectation (closed form: mean of the pmf per group)
    rates = {
        k: (pmf[(groups == k) & (y == 1)].mean(), pmf[(groups == k) & (y == 0)].mean(),
            pmf[groups == k].mean())
        for k in ("a", "b", "c")
    }  # fmt: skip
    col = [0, 1] if constraint == "equalized_odds" else [2]
    for c in col:
        vals = [r[c] for r in rates.values()]
        assert max(vals) - min(vals) < 0.02, rates


def test_threshold_variant_is_audited_with_the_attribute(saved: Path, tmp_path: Path) -> None:
    fit_data = raigate.load_data("demo:train", sample=400, seed=1)
    test = raigate.load_data("demo:test", sample=300, seed=2)
    base = raigate.load_model(str(saved))
    res = harden_fairness(
        base, fit_data, tmp_path / "thr", method="threshold", attribute="race", seed=4,
        progress=False,
    )  # fmt: skip
    variant = raigate.load_model(str(res.model_spec))
    assert variant.digest == res.digest != base.digest
    assert variant.postprocess.needs_attributes == ("race",)
    record = json.loads(res.record.read_text())
    assert record["method"] == "threshold" and record["needs_sensitive_attribute_at_prediction"]
    assert record["data"]["manifest_digest"] == fit_data.manifest.digest

    # evaluate's predictions = fairlearn's predict on the base model's scores of the test
    # data with the test rows' race, random_state = the variant's seed
    from fairlearn.postprocessing import ThresholdOptimizer  # noqa: F401 (rules came from it)

    from raigate.audit.evaluate import prepare

    scores = positive_scores(base, prepare(base, test), 1, batch_size=64, device="cpu",
                             progress=False)  # fmt: skip
    races = test.attributes["race"].astype(str).to_numpy(dtype=object)
    rule = GroupThresholds.read(tmp_path / "thr" / "model-group-thresholds.json")
    pmf = rule.positive_probability(scores, races)
    u = np.random.RandomState(4).rand(len(test))
    expected = (pmf >= u).astype(np.int64)  # model class 1 = Female = data label 1
    result = evaluate.run(variant, test, evaluate.EvaluateParams(progress=False, batch_size=37))
    assert result.metric("accuracy") == pytest.approx(float((expected == test.labels).mean()))
    assert result.model.digest == variant.digest
    params = fairness.FairnessParams(
        n_boot=200, progress=False, plots=False, sensitive=["race"], intersections=[]
    )
    fair = fairness.run(variant, test, params)
    assert fair.metric("accuracy") == result.metric("accuracy")

    # a check that needs a function of the image alone refuses it, naming the base model
    from raigate.audit import explanations, privacy, robustness
    from raigate.defenses import harden_smoothing

    members = privacy.PrivacyParams(members="demo:train", progress=False)
    for run, p in ((robustness.run, None), (explanations.run, None), (privacy.run, members)):
        with pytest.raises(ConfigError, match="attribute-dependent predictor: audit the base"):
            run(variant, test, p)
    with pytest.raises(ConfigError, match="noise training for smoothing cannot use"):
        harden_smoothing(variant, test, tmp_path / "s", sigma=0.25, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="lacks"):
        evaluate.run(variant, _without_race(test), evaluate.EvaluateParams(progress=False))


def _without_race(data: Dataset) -> Dataset:
    import copy

    view = copy.copy(data)
    view._all_attributes = data._all_attributes.drop(columns=["race"])
    return view


def test_training_variants_reload_and_record_their_method(saved: Path, tmp_path: Path) -> None:
    data = raigate.load_data("demo:train", sample=256, seed=3)
    base = raigate.load_model(str(saved))
    for method in ("reweight", "resample", "group-dro"):
        res = harden_fairness(
            base, data, tmp_path / method, method=method, attribute="race", epochs=1,  # type: ignore[arg-type]
            seed=2, progress=False,
        )  # fmt: skip
        again = raigate.load_model(str(res.model_spec))
        assert again.digest == res.digest != base.digest
        rec = json.loads(res.record.read_text())
        assert rec["method"] == method and rec["attribute"] == "race" and rec["epochs"] == 1
        assert rec["base_model"]["digest"] == base.digest
        assert len(rec["train_loss"]) == 1 and {g["group"] for g in rec["groups"]} == set(
            data.attributes["race"].astype(str)
        )
    assert abs(sum(g["q"] for g in rec["groups"]) - 1) < 1e-9 and len(rec["q_per_epoch"]) == 1


# -- a variant in a signed audit plan --------------------------------------------------------
def test_fair_variant_in_a_plan_is_signed_and_verifies(saved: Path, tmp_path: Path) -> None:
    from cli_helpers import assert_user_error, invoke

    data = raigate.load_data("demo:train", sample=300, seed=5)
    base = raigate.load_model(str(saved))
    thr = harden_fairness(base, data, tmp_path / "thr", method="threshold", attribute="race",
                          progress=False)  # fmt: skip
    plan = tmp_path / "plan.toml"
    body = (
        f'seed = 1\n[model]\nspec = "{saved}"\n[models.fair]\nspec = "thr/model.json"\n'
        '[data]\nspec = "demo:test"\nsample = 200\n'
        '[checks.fairness]\nsensitive = ["race"]\nn_boot = 200\nplots = false\n'
        '[checks.fairness_fair]\ncheck = "fairness"\nmodel = "fair"\nsensitive = ["race"]\n'
        "n_boot = 200\nplots = false\n"
    )
    plan.write_text(body)
    code, out = invoke("keys", "generate", "--out", str(tmp_path / "keys"))
    assert code == 0, out
    key = tmp_path / "keys" / "raigate.key"
    code, out = invoke("audit", str(plan), "--out", str(tmp_path / "bundle"), "--key", str(key))
    assert code in (0, 1), out
    report = json.loads((tmp_path / "bundle" / "report.json").read_text())
    assert report["models"]["fair"]["digest"] == thr.digest
    assert report["models"]["fair"]["postprocess"]["needs_attributes_at_prediction"] is True
    assert report["checks"]["fairness_fair"]["model"]["digest"] == thr.digest
    html = (tmp_path / "bundle" / "report.html").read_text()
    assert "post-processed by race: needs the sensitive attribute at prediction time" in html
    code, out = invoke("verify", str(tmp_path / "bundle"), "--key", str(key.with_suffix(".pub")))
    assert code == 0, out
    import base64

    envelope = json.loads((tmp_path / "bundle" / "attestation.dsse.json").read_text())
    subjects = {s["name"] for s in json.loads(base64.b64decode(envelope["payload"]))["subject"]}
    assert "model:thr/model-group-thresholds.json" in subjects
    assert any(s.endswith("base.safetensors") for s in subjects)
    # tampering with the rule is caught at load time, before any check
    rule = tmp_path / "thr" / "model-group-thresholds.json"
    rule.write_text(rule.read_text().replace('"seed": 0', '"seed": 1'))
    code, out = invoke("audit", str(plan), "--out", str(tmp_path / "b2"))
    assert_user_error(code, out, "does not match the sha256")

    # a robustness check on the variant is refused at preflight, in one line
    plan.write_text(body.replace("[checks.fairness]", '[checks.rob]\ncheck = "robustness"\n'
                                 'model = "fair"\n[checks.fairness]'))  # fmt: skip
    rule.write_text(rule.read_text().replace('"seed": 1', '"seed": 0'))
    code, out = invoke("audit", str(plan), "--out", str(tmp_path / "b3"))
    assert_user_error(code, out, "checks.rob", "audit the base model")
