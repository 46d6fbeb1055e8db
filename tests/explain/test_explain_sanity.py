"""Cascading randomization (Adebayo et al. 2018): passes for gradients on a trained model,
fails for a model-independent edge filter, never touches the user's model."""

from __future__ import annotations

import torch

import raigate
from raigate.audit import explanations
from raigate.explain.sanity import cascade, checkpoint_positions, randomization_units
from raigate.models.base import Model, module_tensors, state_digest
from raigate.zoo import resnet20, small_cnn


def test_units_are_parameter_layers_top_first() -> None:
    names = [n for n, _ in randomization_units(small_cnn(num_classes=2))]
    assert names == ["classifier", "features.8", "features.4", "features.0"]
    r20 = [n for n, _ in randomization_units(resnet20())]
    assert r20[0] == "linear" and r20[-1] == "conv1" and "layer3.2.bn2" in r20
    assert len(r20) == 1 + 19 + 19  # linear, 19 convs, 19 BatchNorms
    assert checkpoint_positions(39, 5) == [1, 10, 20, 30, 39]  # linspace, half to even
    assert checkpoint_positions(4, 10) == [1, 2, 3, 4]
    assert checkpoint_positions(4, 1) == [4]


def test_cascade_randomizes_a_copy_from_the_top_down() -> None:
    torch.manual_seed(0)
    model = raigate.wrap(small_cnn(num_classes=2), class_names=["a", "b"], input_shape=(3, 8, 8))
    before = state_digest(module_tensors(model.net))
    original = {k: v.clone() for k, v in model.net.state_dict().items()}
    seen = []
    for step in cascade(model, checkpoints=4, seed=0):
        state = step.model.net.state_dict()
        changed = [k for k in original if not torch.equal(original[k], state[k])]
        seen.append((step.layer, step.randomized, sorted({k.rsplit(".", 1)[0] for k in changed})))
    assert seen[0] == ("classifier", 1, ["classifier"])
    assert seen[1] == ("features.8", 2, ["classifier", "features.8"])
    assert seen[-1][1] == 4 and len(seen[-1][2]) == 4
    assert state_digest(module_tensors(model.net)) == before  # the user's model is untouched


def test_randomization_passes_for_gradients_and_fails_for_an_edge_filter(
    trained_cnn: Model, edge_method: object
) -> None:
    data = raigate.load_data("demo:test", limit=64)
    params = explanations.ExplainParams(
        methods=["saliency", "edge"],
        n_samples=12,
        sanity_samples=12,
        sanity_layers=4,
        sensitivity_samples=0,
        grid_samples=0,
        progress=False,
    )
    result = explanations.run(trained_cnn, data, params)
    sanity = result.table("sanity")
    final = sanity[sanity["all_randomized"]].set_index("method")
    # gradients of a trained model: the maps change once the weights are gone
    assert final.loc["saliency", "spearman"] < params.sanity_max_spearman
    assert bool(final.loc["saliency", "passed"])
    # the edge filter never looks at the model: identical maps at every depth
    edge = sanity[sanity["method"] == "edge"]
    assert edge["spearman"].tolist() == [1.0] * 4 and not edge["passed"].any()
    by_id = {f.id: f for f in result.findings}
    assert by_id["explanations.sanity.saliency"].severity == "pass"
    assert by_id["explanations.sanity.edge"].severity == "fail"
    assert result.verdict == "fail"
    # the check's Spearman is the mean of scipy's per-image correlations
    from scipy.stats import spearmanr

    from raigate.explain.methods import AttributionConfig, get_method
    from raigate.explain.sanity import cascade as run_cascade

    chosen = explanations.explained_samples(data, params)  # the images the check explains
    x = torch.stack([chosen[i][0] for i in range(len(chosen))])
    with torch.no_grad():
        target = trained_cnn.logits(x).argmax(1)
    sal = get_method("saliency")
    ref = sal.attribute(trained_cnn, x, target, AttributionConfig()).sum(1).abs()
    *_, last = run_cascade(trained_cnn, checkpoints=4, seed=params.seed)
    rnd = sal.attribute(last.model, x, target, AttributionConfig()).sum(1).abs()
    rho = [spearmanr(ref[i].flatten(), rnd[i].flatten()).statistic for i in range(len(x))]
    assert abs(final.loc["saliency", "spearman"] - float(sum(rho) / len(rho))) < 1e-5
