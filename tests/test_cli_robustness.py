"""``raigate robustness`` and ``raigate harden smoothing`` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from cli_helpers import assert_user_error, invoke

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("harden")
    code, text = invoke(
        "harden", "smoothing", "--model", "raigate.zoo:small_cnn", "--data", "demo:train",
        "--random-init",
        "--limit", "320", "--sigma", "0.25", "--epochs", "2", "--lr", "0.003",
        "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    assert "with Gaussian noise sigma=0.25 for 2 epoch(s) on 320 images" in text
    assert f"--smoothing-model {out / 'model.json'} --data demo:train" in text
    return out / "model.json"


def test_robustness_end_to_end_on_the_hardened_model(hardened: Path, tmp_path: Path) -> None:
    code, text = invoke(
        "robustness", "--model", str(hardened), "--data", "demo:test", "--sample", "32",
        "--eps", "4/255", "--norm", "linf,l2", "--pgd-steps", "2", "--smoothing-sigma", "0.25",
        "--eot-samples", "2", "--predict-n", "16", "--certify-n", "100", "--certify-n0", "10",
        "--certify-max-samples", "16", "--device", "cpu", "--out", str(tmp_path),
        "--min-robust-accuracy", "pgd:l2:4/255=0.5",
        "--min-robust-accuracy", "smoothed:fgsm:linf:4/255=0.95",
        "--min-certified-accuracy", "0.1=0.2", "--gate-alpha", "0.1",
    )  # fmt: skip
    doc = json.loads((tmp_path / "result.json").read_text())
    gated = {f["id"]: f for f in doc["findings"] if f["id"].startswith("robustness.min_")}
    assert code == (1 if any(f["severity"] == "fail" for f in gated.values()) else 0), text
    # each gate against statsmodels' Clopper-Pearson at alpha/m on the counts in result.json
    rows = {(r["model"], r["attack"], r["norm"]): r for r in doc["metrics"]["attacks"]}
    cert = pd.read_csv(tmp_path / "certification.csv")
    counts = {
        "robustness.min_robust_accuracy[pgd:l2:4/255]": (rows["base", "pgd", "l2"], 0.5),
        "robustness.min_robust_accuracy[smoothed:fgsm:linf:4/255]": (
            rows["smoothed", "fgsm", "linf"], 0.95,
        ),
    }  # fmt: skip
    outcomes = {k: (r["correct"], r["n"], m) for k, (r, m) in counts.items()}
    hit = cert["correct"] & (cert["radius"] >= 0.1)
    outcomes["robustness.min_certified_accuracy[r=0.1]"] = (int(hit.sum()), len(cert), 0.2)
    assert set(gated) == set(outcomes)
    for fid, (k, n, minimum) in outcomes.items():
        lo, hi = proportion_confint(k, n, alpha=0.1 / 3, method="beta")
        want = "fail" if hi < minimum else "pass" if lo >= minimum else "warn"
        assert gated[fid]["severity"] == want and f"[{lo:.4f}, {hi:.4f}]" in gated[fid]["message"]
    assert doc["params"]["gates"]["m"] == 3 and doc["params"]["gate_alpha"] == 0.1
    assert doc["verdict_scope"] is None
    assert "robustness gates (3; two-sided Clopper-Pearson intervals at confidence 1 - 0.1/3" in (
        text
    )
    verdict = max((f["severity"] for f in doc["findings"]), key=["pass", "warn", "fail"].index)
    assert f"\nrobustness: {verdict.upper()}\n" in text  # gated: no scope note
    assert "attacks: about" in text
    assert "certify: 16 images x (10 selection + 100 estimation noise draws) = 1,760" in text
    assert "smoothed vs base (sigma=0.25; smoothed attacked with EOT m=2" in text
    assert "certified accuracy (CERTIFY, sigma=0.25, n0=10, n=100, alpha=0.001" in text
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["check"] == "robustness"
    rows = doc["metrics"]["attacks"]
    assert {(r["model"], r["attack"], r["norm"]) for r in rows} >= {
        ("base", "fgsm", "linf"), ("base", "pgd", "l2"), ("smoothed", "pgd", "linf"),
    }  # fmt: skip
    assert all(r["n"] == 32 for r in rows)
    assert doc["params"]["eps"] == [4 / 255] and doc["params"]["norms"] == ["linf", "l2"]
    assert {"abstain_rate", "average_certified_radius", "certification"} <= set(doc["metrics"])
    assert (tmp_path / "certification.csv").is_file()


def test_smoothing_model_defends_with_the_variant_and_attacks_the_original(
    hardened: Path, tmp_path: Path
) -> None:
    """Base rows attack --model; smoothed rows are exactly those of the variant smoothed on
    its own (same seed, same noise), so only the undefended side changes."""
    common = [
        "--data", "demo:test", "--sample", "24", "--eps", "4/255", "--pgd-steps", "2",
        "--smoothing-sigma", "0.25", "--eot-samples", "2", "--predict-n", "8", "--no-certify",
        "--device", "cpu",
    ]  # fmt: skip
    code, text = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--random-init", "--mean", "0.5,0.5,0.5",
        "--std", "0.5,0.5,0.5", "--smoothing-model", str(hardened), *common,
        "--out", str(tmp_path / "variant"),
    )  # fmt: skip
    assert code == 0, text
    assert f"smoothed of {hardened} vs base (sigma=0.25" in text
    code, text = invoke(
        "robustness", "--model", str(hardened), *common, "--out", str(tmp_path / "self")
    )
    assert code == 0, text
    variant = json.loads((tmp_path / "variant" / "result.json").read_text())
    # no robustness gate: the verdict line names what it covers, never a bare PASS
    assert variant["verdict_scope"] == "attack soundness checked; robustness not gated"
    verdict = max((f["severity"] for f in variant["findings"]), key=["pass", "warn", "fail"].index)
    label = f"{verdict.upper()} (attack soundness checked; robustness not gated)"
    assert f"\nrobustness: {label}\n" in text
    assert "[PASS] attack soundness: largest excess" in text
    alone = json.loads((tmp_path / "self" / "result.json").read_text())
    hardened_digest = alone["model"]["digest"]
    assert variant["model"]["digest"] != hardened_digest  # base rows: the untrained original
    (ref,) = variant["metrics"]["smoothing_model"]
    assert ref["digest"] == hardened_digest and ref["same_as_audited"] is False
    assert alone["metrics"]["smoothing_model"][0]["same_as_audited"] is True

    def rows(doc: dict, model: str) -> list[tuple]:
        return [
            (r["attack"], r["norm"], r["eps"], r["correct"])
            for r in doc["metrics"]["attacks"]
            if r["model"] == model
        ]

    assert rows(variant, "smoothed") == rows(alone, "smoothed")
    assert "f = the variant" in variant["params"]["definitions"]["smoothed_model"]


def test_smoothing_model_must_match_classes(hardened: Path, tmp_path: Path) -> None:
    label_map = tmp_path / "map.json"
    label_map.write_text('{"a": "female", "b": "male"}')
    code, out = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--random-init", "--class-names", "a,b,c",
        "--data", "demo:test", "--limit", "4", "--label-map", str(label_map),
        "--smoothing-sigma", "0.25", "--smoothing-model", str(hardened), "--out", str(tmp_path),
    )  # fmt: skip
    assert_user_error(code, out, "smoothing model", "differ from the audited model's")
    code, out = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "4",
        "--random-init",
        "--smoothing-model", str(hardened), "--out", str(tmp_path),
    )  # fmt: skip
    assert_user_error(code, out, "--smoothing-model needs --smoothing-sigma")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--eps=1/255,-1/255"], ["--eps values must be >= 0, got '-1/255'"]),
        (["--eps", "a/b"], ["--eps: 'a/b' is not a number or a fraction like 8/255"]),
        (["--eps", "4/0"], ["--eps: '4/0' divides by zero"]),
        (["--norm", "lnf"], ["--norm must be linf or l2", "'lnf'"]),
        (
            ["--smoothing-sigma", "0.25", "--certify-n0", "200", "--certify-n", "100"],
            ["--certify-n0 (200) must not exceed --certify-n (100)"],
        ),
        (["--smoothing-sigma", "0"], ["--smoothing-sigma", "greater than 0"]),
        (["--attacks", "fgsm,cw"], ["--attacks", "unknown attack 'cw'"]),
        (["--attacks", "art:SquareAtack"], ["unknown ART evasion attack", "SquareAttack"]),
        (["--attacks", "art:SquareAttack", "--attack-params", "{bad"], ["--attack-params"]),
        (["--alpha", "0.9"], ["--alpha"]),
        (
            ["--min-robust-accuracy", "pgd=0.4"],
            ["--min-robust-accuracy 'pgd=0.4' is not ATTACK:NORM:EPS=MIN"],
        ),
        (
            ["--eps", "8/255", "--min-robust-accuracy", "pgd:linf:4/255=0.4"],
            [
                "--min-robust-accuracy: rule pgd:linf:4/255=0.4: eps 4/255 is not measured (eps: "
                "8/255)"
            ],
        ),
        (
            ["--min-robust-accuracy", "pgd:l2:8/255=0.4"],
            ["rule pgd:l2:8/255=0.4: norm l2 is not run (norms: linf)"],
        ),
        (
            ["--attacks", "fgsm", "--min-robust-accuracy", "pgd:linf:8/255=0.4"],
            ["attack pgd is not run (attacks: fgsm)"],
        ),
        (["--min-robust-accuracy", "pgd:linf:8/255=1.5"], ["min: Input should be less than"]),
        (["--min-robust-accuracy", "pgd:linf:8/0=0.5"], ["eps: '8/0' divides by zero"]),
        (
            ["--min-robust-accuracy", "smoothed:pgd:linf:8/255=0.5"],
            ["no smoothed model without smoothing_sigma"],
        ),
        (
            [
                "--attacks",
                "fgsm,art:DeepFool",
                "--min-robust-accuracy",
                "art:DeepFool:linf:8/255=0.1",
            ],
            ["art:DeepFool takes no eps budget"],
        ),
        (["--min-certified-accuracy", "0.25=0.6"], ["--min-certified-accuracy", "needs smoothing"]),
        (["--min-certified-accuracy", "0.25"], ["'0.25' is not RADIUS=MIN"]),
        (
            [
                "--smoothing-sigma",
                "0.25",
                "--certify-n",
                "100",
                "--min-certified-accuracy",
                "1=0.5",
            ],
            ["radius 1 cannot be certified with certify_n=100", "largest certifiable radius"],
        ),
        (["--gate-alpha", "0"], ["--gate-alpha", "greater than 0"]),
        (["--attacks", "square", "--query-budget", "1"], ["--query-budget", "greater than or"]),
        (
            [
                "--attacks",
                "square",
                "--smoothing-sigma",
                "0.25",
                "--min-robust-accuracy",
                "smoothed:square:linf:8/255=0.5",
            ],
            ["square attacks the base model only"],
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needles: list[str], tmp_path: Path
) -> None:
    code, out = invoke(
        "robustness", "--model", "raigate.zoo:small_cnn", "--data", "demo:test", "--limit", "4",
        "--random-init",
        "--out", str(tmp_path), *args,
    )  # fmt: skip
    assert_user_error(code, out, *needles)
    assert not (tmp_path / "result.json").exists()


def test_harden_bad_inputs(tmp_path: Path) -> None:
    base = [
        "harden",
        "smoothing",
        "--model",
        "raigate.zoo:small_cnn",
        "--random-init",
        "--data",
        "demo:train",
    ]
    code, out = invoke(*base, "--limit", "4", "--sigma", "-0.5", "--out", str(tmp_path))
    assert_user_error(code, out, "--sigma must be > 0")
    code, out = invoke(
        *base, "--limit", "4", "--sigma", "0.5", "--epochs", "0", "--out", str(tmp_path)
    )
    assert_user_error(code, out, "--epochs must be >= 1")


def test_query_attacks_print_and_record_their_queries(hardened: Path, tmp_path: Path) -> None:
    code, text = invoke(
        "robustness", "--model", str(hardened), "--data", "demo:test", "--sample", "8",
        "--eps", "4/255,16/255", "--attacks", "hsj,square", "--query-budget", "40",
        "--device", "cpu", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, text
    assert "images, square/hsj at most 40 queries per image, Wilson 95% CI:" in text
    assert "queries_mean  queries_max" in text and "PGD" not in text
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["mode"] == "white-box" and doc["params"]["attacks"] == ["square", "hsj"]
    rows = [r for r in doc["metrics"]["attacks"] if r["attack"] != "clean"]
    assert {(r["attack"], r["query_budget"]) for r in rows} == {("square", 40), ("hsj", 40)}
    assert all(1 <= r["queries_mean"] <= r["queries_max"] <= 40 for r in rows)
    assert "upper bound on robust accuracy at 40 queries" in text  # the query findings


def _plan(tmp_path: Path, model: Path, checks: str) -> Path:
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[model]\nspec = "{model}"\n[data]\nspec = "demo:test"\nsample = 24\n{checks}')
    return plan


_ROBUSTNESS = "eps = [0.01568627450980392]\npgd_steps = 2\nlarge_eps_check = false\n"


def test_audit_says_robustness_not_gated_in_console_junit_and_html(
    hardened: Path, tmp_path: Path
) -> None:
    """One check table without a robustness gate, one with a gate (the plan's table form
    with an eps string, and the CLI's string form): only the first carries the scope."""
    import xml.etree.ElementTree as ET

    plan = _plan(
        tmp_path, hardened,
        f"[checks.robustness]\n{_ROBUSTNESS}"
        f'[checks.gated]\ncheck = "robustness"\n{_ROBUSTNESS}'
        'min_robust_accuracy = [{attack = "pgd", norm = "linf", eps = "4/255", min = 0.0}, '
        '"fgsm:linf:4/255=0"]\n',
    )  # fmt: skip
    out = tmp_path / "out"
    code, text = invoke("audit", str(plan), "--out", str(out), "--device", "cpu")
    report = json.loads((out / "report.json").read_text())
    assert code == (0 if report["verdict"] != "fail" else 1), text
    ungated, gated = report["checks"]["robustness"], report["checks"]["gated"]
    scope = "attack soundness checked; robustness not gated"
    assert ungated["verdict_scope"] == scope and gated["verdict_scope"] is None
    severities = {f["id"]: f["severity"] for f in gated["findings"]}
    assert severities["robustness.min_robust_accuracy[pgd:linf:4/255]"] == "pass"  # min 0
    assert gated["params"]["gates"]["rules"] == ["pgd:linf:4/255=0", "fgsm:linf:4/255=0"]

    worst = max((f["severity"] for f in ungated["findings"]), key=["pass", "warn", "fail"].index)
    label = f"{worst.upper()} ({scope})"
    assert f"\nrobustness: {label}\n" in text  # print_verdict
    assert f"robustness: {worst}; {scope} (" in text  # the runner's progress line
    assert not [ln for ln in text.splitlines() if ln.startswith("gated: ")]  # gated: no note

    suites = {s.get("name"): s for s in ET.parse(out / "junit.xml").getroot()}
    rob = suites["robustness"]
    (skipped,) = rob.iter("skipped")
    assert skipped.get("message") == scope and rob.get("skipped") == "1"
    assert {p.get("name"): p.get("value") for p in rob.iter("property")} == {"verdict": label}
    assert suites["gated"].get("skipped") == "0" and not list(suites["gated"].iter("skipped"))
    assert int(rob.get("tests")) == len(ungated["findings"]) + 1

    page = (out / "report.html").read_text()
    glance = page[page.index('id="glance"') : page.index("<h2>Gates</h2>")]
    row = glance[glance.index('href="#check-robustness"') :].split("</tr>")[0]
    assert f'<span class="scope">({scope})</span>' in row
    row = glance[glance.index('href="#check-gated"') :].split("</tr>")[0]
    assert "not gated" not in row and "1 robustness gate(s)" not in row
    assert "2 robustness gate(s), worst" in row
    assert f"**{label}**" in (out / "model-card.md").read_text()


def test_audit_refuses_a_rule_the_plan_does_not_measure_before_running(
    hardened: Path, tmp_path: Path
) -> None:
    plan = _plan(
        tmp_path, hardened,
        f'[checks.robustness]\n{_ROBUSTNESS}min_robust_accuracy = ["pgd:linf:8/255=0.4"]\n',
    )  # fmt: skip
    code, out = invoke("audit", str(plan), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert_user_error(
        code, out, "checks.robustness.min_robust_accuracy",
        "rule pgd:linf:8/255=0.4: eps 8/255 is not measured (eps: 4/255)",
    )  # fmt: skip
    assert not (tmp_path / "out" / "report.json").exists()
