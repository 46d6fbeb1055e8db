"""One bridge from a raigate ``Model`` to ART, and any ART evasion attack by class name.

ART (the Adversarial Robustness Toolbox) has dozens of attacks we do not reimplement; the
bridge makes them available as ``art:NAME`` (e.g. ``art:SquareAttack``, a query-only
black-box attack, to check that white-box gradients are not masked). The ``Model`` already
takes pixels in [0, 1] and normalizes inside, so ART sees a classifier on [0, 1]
(``clip_values=(0, 1)``) with no preprocessing of its own: ε means the same thing to ART
as to our native attacks. A black-box model (no input gradients: an ONNX session, a served
predictor) becomes an ART classifier that can only predict, so an attack that would need
gradients fails in ART's own words instead of deep inside autograd.

ART is imported lazily, inside the functions, so ``import raigate`` stays fast.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from raigate.attacks.gradient import Norm, check_norm, project
from raigate.errors import ConfigError, MissingDependencyError
from raigate.models.base import Model

__all__ = [
    "BLACK_BOX_ATTACKS",
    "art_attack_names",
    "black_box_classifier",
    "is_black_box",
    "make_art_attack",
    "parse_attack_params",
    "resolve_art_attack",
    "run_art_attack",
    "takes_eps",
    "to_art_classifier",
]

BLACK_BOX_ATTACKS = frozenset(
    {
        "BoundaryAttack",
        "GeoDA",
        "HopSkipJump",
        "PixelAttack",
        "SignOPTAttack",
        "SimBA",
        "SquareAttack",
        "ThresholdAttack",
        "ZooAttack",
    }
)
"""ART attacks that only query predictions (score- or decision-based), never gradients.
Listed by hand: ART's estimator requirements do not say it reliably (AutoAttack, for one,
declares no gradient requirement but runs APGD)."""

_ART_NORM = {"linf": np.inf, "l2": 2}


def _import_art() -> Any:
    try:
        import art.attacks.evasion as evasion
    except ImportError as e:  # pragma: no cover - ART is a declared dependency
        raise MissingDependencyError("adversarial-robustness-toolbox", "art:NAME attacks") from e
    return evasion


def is_black_box(name: str) -> bool:
    """Whether ``art:NAME`` (or ``NAME``) only queries the model's predictions."""
    return name.removeprefix("art:") in BLACK_BOX_ATTACKS


def black_box_classifier(
    model: Model, predict: Callable[[np.ndarray], np.ndarray] | None = None
) -> Any:
    """An ART classifier that only predicts: ``predict`` (default: ``model``'s logits under
    ``torch.no_grad``) maps a float32 batch in [0, 1] to scores ``[B, K]``. ART's
    ``BlackBoxClassifierNeuralNetwork``, so score-based attacks that ask for a neural network
    (SquareAttack) accept it, while gradient methods raise."""
    try:
        from art.estimators.classification import BlackBoxClassifierNeuralNetwork
    except ImportError as e:  # pragma: no cover
        raise MissingDependencyError("adversarial-robustness-toolbox", "ART attacks") from e

    def logits(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(a, dtype=np.float32), device=model.device)
            return model.logits(x).float().cpu().numpy()  # type: ignore[no-any-return]

    return BlackBoxClassifierNeuralNetwork(
        predict if predict is not None else logits,
        input_shape=tuple(model.input_shape),
        nb_classes=model.num_classes,
        clip_values=(0.0, 1.0),
    )


def to_art_classifier(model: Model) -> Any:
    """ART's ``PyTorchClassifier`` around ``model``: inputs in [0, 1], cross-entropy loss,
    the model's own device. The adapter does the normalization, so ART adds none. A
    black-box model gets :func:`black_box_classifier` instead."""
    if not model.capabilities.gradients:
        return black_box_classifier(model)
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:  # pragma: no cover
        raise MissingDependencyError("adversarial-robustness-toolbox", "ART attacks") from e
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(model.input_shape),
        nb_classes=model.num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if model.device.type == "cuda" else "cpu",
    )


def art_attack_names() -> list[str]:
    """Class names of ART's evasion attacks, sorted."""
    from art.attacks.attack import EvasionAttack

    evasion = _import_art()
    return sorted(
        n
        for n in dir(evasion)
        if inspect.isclass(getattr(evasion, n)) and issubclass(getattr(evasion, n), EvasionAttack)
    )


def resolve_art_attack(name: str) -> type:
    """The ART evasion attack class called ``name`` (``art:`` prefix optional)."""
    bare = name.removeprefix("art:")
    names = art_attack_names()
    if bare not in names:
        close = difflib.get_close_matches(bare, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"unknown ART evasion attack {bare!r} in --attacks; {hint}valid names include "
            f"FastGradientMethod, ProjectedGradientDescent, SquareAttack, HopSkipJump, "
            f"AutoAttack, CarliniL2Method ({len(names)} in art.attacks.evasion)"
        )
    return getattr(_import_art(), bare)  # type: ignore[no-any-return]


def parse_attack_params(text: str | None) -> dict[str, Any]:
    """``--attack-params`` JSON: an object of keyword arguments for the ART attack."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"--attack-params is not valid JSON ({e.msg} at column {e.colno}); "
            "give an object like '{\"max_iter\": 100}'"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError("--attack-params must be a JSON object of keyword arguments")
    return value


def _default(cls: type, name: str) -> Any:
    p = inspect.signature(cls.__init__).parameters.get(name)  # type: ignore[misc]
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _fill_budget(
    cls: type, params: dict[str, Any], eps: float | None, norm: Norm
) -> dict[str, Any]:
    """Our ε and norm go to the attack where it takes them and the user did not set them;
    a step size ART would default above ε (ART's PGD uses 0.1) becomes 2.5·ε/max_iter."""
    accepted = set(getattr(cls, "attack_params", ()))
    out = dict(params)
    if eps is not None and "eps" in accepted and "eps" not in out:
        out["eps"] = eps
    if "norm" in accepted and "norm" not in out:
        out["norm"] = _ART_NORM[norm]
    if eps is not None and "eps_step" in accepted and "eps_step" not in out:
        iters = out.get("max_iter", _default(cls, "max_iter")) or 10
        out["eps_step"] = 2.5 * eps / int(iters)
    if "verbose" in accepted and "verbose" not in out:
        out["verbose"] = False
    return out


def takes_eps(name: str) -> bool:
    """Whether the ART attack has an ε budget parameter (else it runs once, unbounded)."""
    return "eps" in set(getattr(resolve_art_attack(name), "attack_params", ()))


def make_art_attack(
    model: Model,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    eps: float | None = None,
    norm: Norm = "linf",
) -> Any:
    """An ART evasion attack instance on ``model`` (through :func:`to_art_classifier`)."""
    norm = check_norm(norm)
    cls = resolve_art_attack(name)
    if not model.capabilities.gradients and not is_black_box(cls.__name__):
        raise ConfigError(
            f"art:{cls.__name__} needs input gradients, which {model.display_name} (a black-box "
            f"model) does not give; query-only ART attacks: {', '.join(sorted(BLACK_BOX_ATTACKS))}"
        )
    kwargs = _fill_budget(cls, params or {}, eps, norm)
    try:
        # ART's attacks take the estimator first, named estimator or classifier.
        return cls(to_art_classifier(model), **kwargs)
    except (TypeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"art:{cls.__name__} rejected --attack-params {json.dumps(params or {})}: {first}"
        ) from None


def run_art_attack(
    model: Model,
    name: str,
    x: Tensor,
    y: Tensor,
    *,
    params: dict[str, Any] | None = None,
    eps: float | None = None,
    norm: Norm = "linf",
) -> Tensor:
    """Run ``art:NAME`` untargeted on a batch (``y``: model class indices of the true
    labels) and return the adversarial images as a tensor on ``x``'s device.

    With ``eps`` the result is projected onto the ε-ball and clipped to [0, 1], which only
    removes float rounding for an attack that keeps its budget, so no reported number can
    rest on a perturbation larger than the ε it is labelled with.
    """
    attack = make_art_attack(model, name, params, eps=eps, norm=norm)
    x_np = x.detach().cpu().numpy().astype(np.float32)
    one_hot = np.eye(model.num_classes, dtype=np.float32)[y.detach().cpu().numpy()]
    try:
        out = attack.generate(x=x_np, y=one_hot)
    except (TypeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"art:{type(attack).__name__} failed on this model: {first}") from None
    x_adv = torch.as_tensor(np.asarray(out, dtype=np.float32), device=x.device)
    if eps is not None:
        x_adv = project(x_adv, x.detach(), eps, norm)
    return x_adv.clamp_(0.0, 1.0)
