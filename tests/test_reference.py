"""CLI and plan parity: every check command's option is a plan key (or says where it goes in
a plan), a plan key takes the option's name and text, and docs/reference.md, generated from
the code, is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from raigate.attacks import parse_attack_params
from raigate.audit.fairness import load_thresholds
from raigate.cli_common import make_params
from raigate.commands.robustness import _FLAGS, _floats, _norms
from raigate.config import DataSection, ModelSection, load_plan
from raigate.errors import ConfigError
from raigate.reference import CHECK_COMMANDS, CLI_ONLY, OUTPUT, _long, check_options, plan_key
from raigate.reference import render as render_reference

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "PYTHONPATH=src python -m raigate.reference"


def test_checked_in_reference_is_current() -> None:
    checked_in = (ROOT / OUTPUT).read_text(encoding="utf-8")
    assert checked_in == render_reference(), f"{OUTPUT} is stale; regenerate it: {REGENERATE}"


@pytest.mark.parametrize("command", list(CHECK_COMMANDS))
def test_every_check_option_has_a_plan_key(command: str) -> None:
    missing = [_long(o) for o in check_options(command) if plan_key(command, _long(o)) is None]
    assert not missing, (
        f"raigate {command}: {missing} have no plan key; add the field (or an alias) to the "
        f"check's Params, or list the option in raigate.reference.CLI_ONLY, then {REGENERATE}"
    )


def test_cli_only_options_name_real_plan_keys() -> None:
    sections = {"[model]": ModelSection, "[data]": DataSection}
    for option, where in CLI_ONLY.items():
        table, _, key = where.partition(" ")
        if table in sections:
            assert key in sections[table].model_fields, (option, where)


def _plan(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n'
        'class_names = "a, b"\nmean = "1/2,0.5,0.5"\ninput_size = "3,32,32"\n'
        f'[data]\nspec = "demo:test"\n{body}'
    )
    return path


def test_plan_takes_the_option_names_and_comma_text(tmp_path: Path) -> None:
    plan = load_plan(
        _plan(
            tmp_path,
            '[checks.robustness]\nnorm = "linf,l2"\neps = "1/255, 2/255"\nradii = "0,1/4"\n'
            'attacks = "pgd,fgsm"\nmin_robust_accuracy = "pgd:linf:2/255=0.1"\n'
            "attack_params = '{\"max_iter\": 3}'\n"
            '[checks.explanations]\nmax_sanity_spearman = 0.5\nmethods = "saliency"\n'
            '[checks.fairness]\nsensitive = "race,gender"\nintersections = "none"\n'
            '[checks.privacy]\nmembers = "demo:train"\nattacks = "loss"\n',
        )
    )
    assert plan.model.class_names == ["a", "b"] and plan.model.mean == [0.5, 0.5, 0.5]
    assert plan.model.input_size == [3, 32, 32]
    rob, expl, fair, priv = (inst.params for inst in plan.check_instances())
    assert rob.norms == ["linf", "l2"] and rob.eps == [1 / 255, 2 / 255]
    assert rob.certify_radii == [0.0, 0.25] and rob.attacks == ["fgsm", "pgd"]
    assert expl.sanity_max_spearman == 0.5 and expl.methods == ["saliency"]
    assert fair.sensitive == ["race", "gender"] and fair.intersections == []
    assert priv.attacks == ["loss"]
    # the same text through the command line's parsers gives the same parameters
    cli = make_params(
        type(rob), _FLAGS, norms=_norms("linf,l2"), eps=_floats("1/255, 2/255", "eps"),
        certify_radii=_floats("0,1/4", "radii"), attacks=["pgd", "fgsm"],
        min_robust_accuracy=["pgd:linf:2/255=0.1"],
        attack_params=parse_attack_params('{"max_iter": 3}'),
    )  # fmt: skip
    assert cli.model_dump() == rob.model_dump()


def test_old_plan_keys_still_work(tmp_path: Path) -> None:
    plan = load_plan(
        _plan(
            tmp_path,
            '[checks.robustness]\nnorms = ["l2"]\ncertify_radii = [0.5]\n'
            "[checks.explanations]\nsanity_max_spearman = 0.25\n",
        )
    )
    rob, expl = (inst.params for inst in plan.check_instances())
    assert rob.norms == ["l2"] and rob.certify_radii == [0.5]
    assert expl.sanity_max_spearman == 0.25


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[checks.robustness]\nnorm = "linf,l3"\n', "checks.robustness.norm.1"),
        ('[checks.robustness]\nradii = "0,1/0"\n', "checks.robustness.radii.1: '1/0' divides"),
        (
            '[checks.robustness]\nnorm = "l2"\nnorms = ["linf"]\n',
            "checks.robustness: norms and norm are one key (norms); give it once",
        ),
    ],
)
def test_plan_errors_name_the_key_as_typed(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_plan(_plan(tmp_path, body))
    assert needle in str(err.value), err.value


def test_plan_names_the_files_the_cli_takes(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "map.json").write_text('{"cat": "c", "dog": "d"}')
    (tmp_path / "conf" / "gates.toml").write_text('selection_rate_ratio = "off"\n')
    plan = load_plan(
        _plan(
            tmp_path,
            '[checks.evaluate]\nlabel_map = "conf/map.json"\n'
            '[checks.fairness]\nthresholds = "conf/gates.toml"\nlabel_map = {cat = "c"}\n',
        )
    )
    ev, fair = (inst.params for inst in plan.check_instances())
    assert ev.label_map == {"cat": "c", "dog": "d"}  # read relative to the plan, not the cwd
    assert fair.label_map == {"cat": "c"}
    assert fair.thresholds == load_thresholds(tmp_path / "conf" / "gates.toml")
    assert fair.thresholds.selection_rate_ratio is None


def test_a_missing_label_map_file_names_the_key(tmp_path: Path) -> None:
    path = _plan(tmp_path, '[checks.robustness]\nlabel_map = "nowhere.json"\n')
    with pytest.raises(
        ConfigError, match=r"checks\.robustness\.label_map: .*nowhere\.json: label map"
    ):
        load_plan(path)
