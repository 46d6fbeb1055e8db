"""``raigate demo``: the whole audit on built-in synthetic data, offline, in minutes.

Stages (each announced as ``[demo k/7]``):

1. load ``demo:train`` / ``demo:test`` (synthetic, with a deliberately injected group
   disparity, see :mod:`raigate.data.demo`, so the audit has something real to find);
2. train the demo model (``raigate.zoo:small_cnn``), save it as safetensors plus a model spec;
3. harden: noise-train a copy at the smoothing sigma
   (:func:`raigate.defenses.harden_smoothing`) so its randomized-smoothing defense predicts
   instead of abstaining;
4. harden for fairness: fine-tune a copy with Group DRO (Sagawa et al. 2020) over ``race``,
   the attribute with the planted disparity (:func:`raigate.defenses.harden_fairness`);
5. retrain from scratch with DP-SGD to (epsilon=2, delta=1e-5)
   (:func:`raigate.privacy.train_private`, GroupNorm variant of the same network), writing
   its privacy ledger;
6. audit: one plan (``demo-plan.toml``) covering the model and its variants: accuracy,
   fairness and explanations of the model; attacks on the model against the smoothed
   noise-trained variant, certified; the same fairness check on the Group DRO variant (the
   race gap before and after, each with its interval); accuracy, fairness and measured
   membership leakage of the DP variant against its ledger's epsilon, next to the
   non-private model's leakage; the report bundle goes to ``audit/`` inside the output folder;
7. sign (with ``--key``, or a throwaway key pair it makes in the output folder and says so)
   and verify offline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raigate._io import write_atomic
from raigate.audit.runner import AuditOutcome, run_audit, verify_bundle
from raigate.config import load_plan
from raigate.data import DEMO_DISPARITY, load_data
from raigate.models.base import Normalize
from raigate.models.loaders import write_model_spec
from raigate.models.weights import save_safetensors
from raigate.privacy.ledger import LEDGER_NAME
from raigate.results import CheckResult
from raigate.training import fit
from raigate.zoo import small_cnn

DEMO_FACTORY = "raigate.zoo:small_cnn"

SMOOTHING_SIGMA = 0.25
DP_EPSILON = 2.0
DP_DELTA = 1e-5
FAIR_METHOD = "group-dro"
SMOOTHED_DIR = "demo-smoothed"  # stage 3's output folder, [models.smoothed]
FAIR_DIR = "demo-fair"  # stage 4's output folder, [models.fair]
PRIVATE_DIR = "demo-private"  # stage 5's output folder, [models.private]
AUDIT_DIR = "audit"  # stage 5's report bundle: a folder of its own, holding only signed files

# The check tables of the demo plan (table name -> TOML body), sized to keep the whole demo
# within a few minutes on 2 CPU cores. Gate thresholds are the checks' documented defaults.
DEMO_CHECKS: dict[str, str] = {
    "evaluate": "min_accuracy = 0.85\n",
    "fairness": 'sensitive = ["race", "gender", "age"]\nintersections = [["race", "gender"]]\n',
    "explanations": "n_samples = 8\n",
    # attacks on the model as shipped vs the smoothed noise-trained variant, plus CERTIFY;
    # L-inf (FGSM's classic setting) and L2 (the norm smoothing certifies) in two tables
    "robustness": (
        'attacks = ["fgsm", "pgd"]\nnorms = ["linf"]\n'
        "eps = [0.00392156862745098, 0.01568627450980392, 0.03137254901960784]\n"
        f"pgd_steps = 10\nmax_samples = 200\nsmoothing_sigma = {SMOOTHING_SIGMA}\n"
        'smoothing_model = "smoothed"\neot_samples = 4\n'
        "predict_n = 32\ncertify_n = 1000\ncertify_n0 = 32\ncertify_max_samples = 100\n"
    ),
    "robustness_l2": (
        'check = "robustness"\nattacks = ["fgsm", "pgd"]\nnorms = ["l2"]\n'
        "eps = [0.5, 1.0, 2.0]\npgd_steps = 10\nmax_samples = 200\nlarge_eps_check = false\n"
        f'smoothing_sigma = {SMOOTHING_SIGMA}\nsmoothing_model = "smoothed"\n'
        "eot_samples = 4\npredict_n = 32\ncertify = false\n"
    ),
    # the Group DRO variant, audited exactly as the model is (plots aside): the gap before/after
    "fairness_fair": (
        'check = "fairness"\nmodel = "fair"\nsensitive = ["race", "gender", "age"]\n'
        'intersections = [["race", "gender"]]\nplots = false\n'
    ),
    # membership leakage of the non-private model: demo:train members vs demo:test
    "privacy": 'members = "demo:train"\nmembers_sample = 2000\nattacks = ["loss"]\n',
    # the DP-SGD variant: its accuracy and group gaps, and its leakage against its ledger
    "evaluate_private": 'check = "evaluate"\nmodel = "private"\nmin_accuracy = 0.85\n',
    "fairness_private": (
        'check = "fairness"\nmodel = "private"\nsensitive = ["race"]\nplots = false\n'
    ),
    "privacy_private": (
        'check = "privacy"\nmodel = "private"\nmembers = "demo:train"\n'
        'members_sample = 2000\nattacks = ["loss"]\n'
        f'ledger = "{PRIVATE_DIR}/{LEDGER_NAME}"\n'
    ),
}


@dataclass(frozen=True)
class DemoRun:
    """Where the demo wrote its outputs, and what the audit decided."""

    out_dir: Path
    model_spec: Path
    weights: Path
    plan: Path
    outcome: AuditOutcome
    public_key: Path
    train_accuracy: float
    seconds: float
    smoothed_spec: Path
    fair_spec: Path
    private_spec: Path
    ledger: Path

    @property
    def result(self) -> CheckResult:
        """The clean-accuracy result (``checks/evaluate/result.json``)."""
        return self.outcome.report.checks["evaluate"]

    @property
    def bundle(self) -> Path:
        """The signed report bundle (``AUDIT_DIR`` inside the demo's folder)."""
        return self.outcome.out_dir

    @property
    def result_path(self) -> Path:
        return self.bundle / "checks" / "evaluate" / "result.json"


def _plan_text(
    seed: int,
    checks_toml: dict[str, str],
    dp_epsilon: float,
    smoothed: str,
    private: str,
    fair: str,
) -> str:
    """The demo plan; ``smoothed``/``private``/``fair``: the variants' model specs, relative
    to it."""
    checks = "".join(f"\n[checks.{name}]\n{body}" for name, body in checks_toml.items())
    return (
        "# written by `raigate demo`: run it again with `raigate audit demo-plan.toml --out DIR`\n"
        f'seed = {seed}\nfail_on = "fail"\n\n'
        '[model]\nspec = "demo-model.json"\n\n'
        f"# noise-trained at sigma={SMOOTHING_SIGMA} for randomized smoothing (raigate harden "
        "smoothing)\n"
        f'[models.smoothed]\nspec = "{smoothed}"\n\n'
        f"# fine-tuned with {FAIR_METHOD} over {DEMO_DISPARITY['attribute']} (raigate harden "
        "fairness)\n"
        f'[models.fair]\nspec = "{fair}"\n\n'
        f"# retrained from scratch with DP-SGD to epsilon={dp_epsilon:g}, delta={DP_DELTA:g} "
        "(raigate privacy train)\n"
        f'[models.private]\nspec = "{private}"\n\n'
        '[data]\nspec = "demo:test"\n'
        f"{checks}\n"
        "[card]\n"
        'intended_use = "Demonstration of raigate on built-in synthetic data; '
        'not for use on people."\n'
        'training_data = "demo:train, 4,000 synthetic images generated by '
        'raigate.data.demo."\n'
    )


def run_demo(
    out_dir: str | Path,
    *,
    epochs: int = 8,
    harden_epochs: int = 4,
    fair_epochs: int = 2,
    dp_epochs: float = 10,
    dp_epsilon: float = DP_EPSILON,
    seed: int = 0,
    key: str | Path | None = None,
    checks: dict[str, str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoRun:
    """Train, harden, retrain privately, audit, sign and verify; returns paths and outcome.

    ``checks`` maps check table names to their TOML bodies (default ``DEMO_CHECKS``).
    """
    checks = dict(DEMO_CHECKS if checks is None else checks)
    from raigate.defenses import harden_fairness, harden_smoothing
    from raigate.models import load_model
    from raigate.privacy.train import DPParams, run_private_training
    from raigate.reports.attest import PUBLIC_KEY_NAME, generate_keys

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_data("demo:train")
    test = load_data("demo:test")
    echo(
        f"[demo 1/7] data: {len(train)} train / {len(test)} test synthetic 3x32x32 images "
        f"(task: {train.task}); SYNTHETIC, not real faces"
    )

    echo(f"[demo 2/7] train the demo model ({DEMO_FACTORY}, {epochs} epochs) …")
    torch.manual_seed(seed)  # the initial weights too, so the same seed gives the same model
    net = small_cnn(num_classes=len(train.class_names))
    report = fit(
        net,
        train,
        normalize=Normalize([0.5] * 3, [0.5] * 3),
        epochs=epochs,
        lr=2e-3,
        batch_size=64,
        seed=seed,
        device=device,
        progress=progress,
    )
    echo(
        f"           trained in {report.seconds:.1f}s (final train accuracy "
        f"{report.accuracies[-1]:.3f})"
    )

    weights = save_safetensors(net, out / "demo-model.safetensors")
    spec_path = write_model_spec(
        out / "demo-model.json",
        factory=DEMO_FACTORY,
        kwargs={"num_classes": len(train.class_names)},
        weights=weights,
        class_names=list(train.class_names),
        input_shape=list(train.shape),
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )

    echo(
        f"[demo 3/7] harden: fine-tune a copy with Gaussian noise sigma={SMOOTHING_SIGMA:g} "
        f"({harden_epochs} epochs) for randomized smoothing …"
    )
    hardened = harden_smoothing(
        load_model(str(spec_path)), train, out / SMOOTHED_DIR, sigma=SMOOTHING_SIGMA,
        epochs=harden_epochs, lr=1e-3, batch_size=64, seed=seed, device=device,
        progress=progress,
    )  # fmt: skip
    echo(
        f"           noise-trained in {hardened.report.seconds:.1f}s (accuracy on noisy "
        f"batches {hardened.report.accuracies[-1]:.3f}) -> {hardened.model_spec}"
    )

    attribute = DEMO_DISPARITY["attribute"]
    echo(
        f"[demo 4/7] harden for fairness: fine-tune a copy with {FAIR_METHOD} over {attribute} "
        f"({fair_epochs} epochs) …"
    )
    fair = harden_fairness(
        load_model(str(spec_path)), train, out / FAIR_DIR, method=FAIR_METHOD,
        attribute=attribute, epochs=fair_epochs, lr=1e-3, batch_size=64, seed=seed,
        device=device, progress=progress,
    )  # fmt: skip
    assert fair.report is not None  # a training method
    q = max(fair.groups, key=lambda g: g["q"])
    echo(
        f"           fine-tuned in {fair.report.seconds:.1f}s (largest group weight q: "
        f"{q['group']} {q['q']:.3f}, uniform {1 / len(fair.groups):.3f}) -> {fair.model_spec}"
    )

    echo(
        f"[demo 5/7] DP-SGD: retrain {DEMO_FACTORY} (GroupNorm) from scratch to epsilon="
        f"{dp_epsilon:g}, delta={DP_DELTA:g} ({dp_epochs:g} epochs, Opacus) …"
    )
    t0 = time.perf_counter()
    private = run_private_training(
        DEMO_FACTORY, train, DPParams.build(
            epsilon=dp_epsilon, delta=DP_DELTA, epochs=dp_epochs, batch_size=256, lr=0.5,
            seed=seed, device=device, progress=progress,
        ),
        kwargs={"num_classes": len(train.class_names), "norm": "group"},
        mean=[0.5] * 3, std=[0.5] * 3, out_dir=out / PRIVATE_DIR,
    )  # fmt: skip
    ledger = private.ledger
    assert private.spec_path is not None  # written: out_dir was given
    private_spec = private.spec_path
    ledger_path = out / PRIVATE_DIR / LEDGER_NAME
    echo(
        f"           spent epsilon={ledger.epsilon:.3f} (target {ledger.target_epsilon:g}, "
        f"delta={ledger.delta:g}, "
        f"{ledger.accountant.upper()} accountant; noise multiplier {ledger.noise_multiplier:.3f}, "
        f"q={ledger.sample_rate:.4f}, {ledger.steps} steps, clip {ledger.max_grad_norm:g}) in "
        f"{time.perf_counter() - t0:.1f}s -> {ledger_path}"
    )
    plan_path = write_atomic(
        out / "demo-plan.toml",
        _plan_text(
            seed,
            checks,
            dp_epsilon,
            hardened.model_spec.relative_to(out).as_posix(),
            private_spec.relative_to(out).as_posix(),
            fair.model_spec.relative_to(out).as_posix(),
        ),
    )

    if key is None:
        for stale in ("raigate.key", PUBLIC_KEY_NAME):
            (out / stale).unlink(missing_ok=True)
        key, public = generate_keys(out)
        echo(
            f"no --key given: made a throwaway key pair {key} / {public} (use your own "
            "key with --key to sign for real)"
        )
    else:
        public = Path(key).with_suffix(".pub")
    echo(f"[demo 6/7] audit {plan_path.name}: {', '.join(checks)} …")
    outcome = run_audit(
        load_plan(plan_path), out / AUDIT_DIR, key=key, device=device, progress=progress,
        echo=echo,
    )  # fmt: skip
    results = outcome.report.checks
    if "evaluate" in results:
        echo(_disparity_line(results["evaluate"]))
    for result in results.values():
        if result.check == "robustness":
            for line in _ratio_lines(result):
                echo(line)
    if line := _fairness_line(results):
        echo(line)
    for line in _privacy_lines(results):
        echo(line)
    if public.is_file():
        echo("[demo 7/7] verify the signed report offline …")
        v = verify_bundle(outcome.out_dir, public)
        echo(
            f"           signature OK, {len(v.checked)} signed files match "
            f"(raigate verify {outcome.out_dir} --key {public})"
        )
    else:
        echo(f"[demo 7/7] verify skipped: no public key next to {key} ({public} missing)")
    return DemoRun(
        out_dir=out,
        model_spec=spec_path,
        weights=weights,
        plan=plan_path,
        outcome=outcome,
        public_key=public,
        train_accuracy=report.accuracies[-1],
        seconds=time.perf_counter() - start,
        smoothed_spec=hardened.model_spec,
        fair_spec=fair.model_spec,
        private_spec=private_spec,
        ledger=ledger_path,
    )


def _fairness_line(results: dict[str, CheckResult]) -> str | None:
    """The planted gap before and after fairness hardening, each with its simultaneous
    interval, next to the best the data allow for that group (the generator's oracle)."""
    from raigate.data.demo import oracle_accuracy

    attribute = DEMO_DISPARITY["attribute"]

    def gap(r: CheckResult | None) -> dict[str, Any] | None:
        rows = r.metrics.get("summary", []) if r is not None else []
        return next(
            (
                row
                for row in rows
                if row["measure"] == "accuracy_difference"
                and row["attribute"] == attribute
                and row.get("value") is not None
                and row.get("ci")
            ),
            None,
        )

    before, after = gap(results.get("fairness")), gap(results.get("fairness_fair"))
    if before is None or after is None:
        return None

    def text(row: dict[str, Any]) -> str:
        lo, hi = row["ci"]
        return f"{row['value']:.3f} [{lo:.3f}, {hi:.3f}] (worst {row['group_low']})"

    group = DEMO_DISPARITY["group"]
    return (
        f"fairness hardening ({FAIR_METHOD} over {attribute}): {attribute} accuracy difference "
        f"{text(before)} before, {text(after)} after (best minus worst group, simultaneous "
        f"95% intervals); the generator's oracle reaches {oracle_accuracy('test')[group]:.3f} on "
        f"{group}: the part of the gap that is label noise no retraining can close"
    )


def _privacy_lines(results: dict[str, CheckResult]) -> list[str]:
    """What DP-SGD cost and bought: accuracy and measured leakage, private vs not."""
    lines = []
    ev, ev_dp = results.get("evaluate"), results.get("evaluate_private")
    if ev is not None and ev_dp is not None:

        def acc(r: CheckResult) -> str:
            return (
                f"{r.metric('accuracy'):.3f} [{r.metric('accuracy_ci_low'):.3f}, "
                f"{r.metric('accuracy_ci_high'):.3f}]"
            )

        lines.append(
            f"DP-SGD cost: test accuracy {acc(ev_dp)} private vs {acc(ev)} non-private "
            f"(n={ev.metrics['n']}, Wilson 95%)"
        )
    gate = "fairness.accuracy_difference[race]"
    gaps = [
        next((f.value for f in r.findings if f.id == gate), None)
        for r in (results.get("fairness"), results.get("fairness_private"))
        if r is not None
    ]
    if len(gaps) == 2 and None not in gaps:
        lines.append(
            f"DP-SGD and the planted gap: race accuracy difference {gaps[1]:.3f} private vs "
            f"{gaps[0]:.3f} non-private (best minus worst group, {gate})"
        )
    pr, pr_dp = results.get("privacy"), results.get("privacy_private")
    claimed = pr_dp.metrics.get("claimed_epsilon") if pr_dp is not None else None
    if pr is not None and pr_dp is not None and claimed is not None:
        lines.append(
            f"membership leakage (loss attack, {pr.metrics['n_members']} members vs "
            f"{pr.metrics['n_non_members']} non-members): AUC {pr_dp.metric('auc'):.3f} private "
            f"vs {pr.metric('auc'):.3f} non-private (0.5 = chance); empirical epsilon lower "
            f"bound {pr_dp.metric('eps_lower'):.3f} private vs {pr.metric('eps_lower'):.3f} "
            f"non-private (95%), claimed {claimed:.3f}"
        )
    return lines


def _ratio_lines(result: CheckResult) -> list[str]:
    """Undefended vs smoothed accuracy under the strongest attack run (PGD when present; all
    rows are in the report), each line labelled with its definition and printed whatever it
    says (a model that already resists a weak attack gives about 1x)."""
    rows = result.metrics.get("smoothed_vs_base") or []
    p = result.params
    rows = [r for r in rows if isinstance(rows, list) and r["attack"] != "clean"]
    if any(r["attack"] == "pgd" for r in rows):
        rows = [r for r in rows if r["attack"] == "pgd"]
    defense = "smoothed noise-trained variant" if p.get("smoothing_model") else "smoothed"
    out = []
    for r in rows:
        name = f"PGD-{p['pgd_steps']}" if r["attack"] == "pgd" else r["attack"].upper()
        ratio = "base 0" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        out.append(
            f"{name} {r['norm']} eps={r['eps_text']}: undefended {r['base_accuracy']:.3f}, "
            f"{defense} {r['smoothed_accuracy']:.3f} ({ratio}; sigma={r['sigma']}, EOT "
            f"m={r['eot_samples']}, votes n={r['predict_n']}, {r['n']} images)"
        )
    cert = result.metrics.get("certification")
    if isinstance(cert, list) and cert:
        pts = ", ".join(f"r={c['radius']:g}: {c['certified_accuracy']:.2f}" for c in cert)
        out.append(
            f"certified accuracy (CERTIFY, L2 radius, sigma={p['smoothing_sigma']}, "
            f"n={p['certify_n']}, alpha={p['alpha']}, {result.metrics['certified_n']} images): "
            f"{pts}"
        )
    return out


def _disparity_line(result: CheckResult) -> str:
    """Quote the injected disparity next to what the audit measured, so the reader can see
    the evaluation finds what was planted (and by how much)."""
    d = DEMO_DISPARITY
    rows = [
        r for r in result.metrics["per_attribute"] if r["attribute"] == d["attribute"] and r["n"]
    ]
    group = next(r for r in rows if r["value"] == d["group"])
    others = [r for r in rows if r["value"] != d["group"]]
    rest = sum(r["accuracy"] * r["n"] for r in others) / sum(r["n"] for r in others)
    return (
        f"injected disparity (synthetic, group chosen arbitrarily): {d['attribute']}="
        f"{d['group']} has a weaker gender cue (agreement {d['cue_agreement']:.0%} vs "
        f"{d['cue_agreement_others']:.0%}) and is {d['train_share']:.0%} of train; measured "
        f"accuracy {group['accuracy']:.3f} vs {rest:.3f} for the other groups"
    )
