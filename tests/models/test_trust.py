"""No code from data files: what a model spec JSON or a plan may import without trust, the
scoped ``sys.path``, the random-init refusal and the class-count message."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from raigate.data import load_data
from raigate.errors import ModelLoadError, SpecError
from raigate.models import load_model
from raigate.models.factories import build_network, import_factory, is_builtin_factory
from raigate.zoo import small_cnn

NAMES = ("cat", "dog", "eel")


def marker_module(folder: Path, marker: Path) -> str:
    """A module whose mere import writes ``marker`` (and which builds a real network)."""
    name = f"trustmod_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib
            pathlib.Path({str(marker)!r}).write_text("imported")
            from raigate.zoo import small_cnn

            def build(num_classes=10):
                return small_cnn(num_classes)
            """
        )
    )
    return name


def spec_file(folder: Path, factory: str, **extra: object) -> Path:
    doc = {"factory": factory, "class_names": list(NAMES), "input_shape": [3, 32, 32], **extra}
    path = folder / f"spec_{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(doc))
    return path


# -- the trust rule ------------------------------------------------------------------------
def test_json_naming_os_system_runs_nothing(cwd: Path) -> None:
    pwned = cwd / "PWNED"
    spec = spec_file(cwd, "os:system", kwargs={"command": f"touch {pwned}"})
    with pytest.raises(SpecError) as err:  # the trust refusal comes before any other complaint
        load_model(str(spec))
    msg = str(err.value)
    assert str(spec) in msg and "'os:system'" in msg and "--trust-code" in msg
    assert "\n" not in msg
    assert not pwned.exists()


def test_json_naming_a_foreign_module_imports_nothing_before_refusal(cwd: Path) -> None:
    marker = cwd / "imported.txt"
    mod = marker_module(cwd, marker)
    spec = spec_file(cwd, f"{mod}:build")
    with pytest.raises(SpecError, match=f"names factory '{mod}:build'.*--trust-code"):
        load_model(str(spec), random_init=True)
    assert not marker.exists() and mod not in sys.modules
    # Trusted, the same file loads, and its import ran exactly then.
    model = load_model(str(spec), random_init=True, trust_code=True)
    assert marker.read_text() == "imported" and model.num_classes == 3


def test_raigate_lookalikes_and_non_factories_need_trust(cwd: Path) -> None:
    marker = cwd / "evil.txt"
    evil = cwd / "raigate"  # a folder named raigate where the user stands
    evil.mkdir()
    (evil / "__init__.py").write_text("")
    body = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\nbuild = print\n"
    (evil / "evil.py").write_text(body)
    (cwd / "raigate_evil.py").write_text(body)
    for target in ("raigate_evil:build", "raigate.evil:build", "raigate._io:write_atomic"):
        assert not is_builtin_factory(target)
        with pytest.raises(SpecError, match="--trust-code"):
            build_network(target, origin="m.json")
    assert not marker.exists()
    # Even trusted, a cwd folder cannot shadow the installed raigate package.
    with pytest.raises(SpecError, match=r"cannot import module 'raigate\.evil'"):
        build_network("raigate.evil:build", origin="m.json", trust_code=True)
    assert not marker.exists()
    # Built-in by module, but not a network builder defined there: refused after import.
    assert is_builtin_factory("raigate.zoo._norm:ConfigError")
    with pytest.raises(SpecError, match="--trust-code"):
        import_factory("raigate.zoo._norm:ConfigError", origin="m.json")


def test_raigate_write_primitive_is_not_callable_from_a_spec(cwd: Path) -> None:
    target = cwd / "written.txt"
    spec = spec_file(cwd, "raigate._io:write_atomic", kwargs={"path": str(target), "text": "x"})
    with pytest.raises(SpecError, match=r"raigate\._io:write_atomic"):
        load_model(str(spec), random_init=True)
    assert not target.exists()


def test_builtin_factory_cannot_smuggle_a_foreign_base(cwd: Path) -> None:
    pwned, marker = cwd / "PWNED", cwd / "imported.txt"
    mod = marker_module(cwd, marker)
    for base, base_kwargs in (("os:system", {"command": f"touch {pwned}"}), (f"{mod}:build", {})):
        spec = spec_file(
            cwd,
            "raigate.privacy.fold:private_net",
            kwargs={"base": base, "base_kwargs": base_kwargs},
        )
        with pytest.raises(SpecError, match=f"{spec.name} names factory '{base}'"):
            load_model(str(spec), random_init=True)
    assert not pwned.exists() and not marker.exists()
    # The same nesting with a built-in base is what DP-SGD writes, and needs no trust.
    spec = spec_file(
        cwd, "raigate.privacy.fold:private_net",
        kwargs={"base": "raigate.zoo:small_cnn", "base_kwargs": {"norm": "group"}},
    )  # fmt: skip
    assert load_model(str(spec), random_init=True).num_classes == 3


def test_plan_factory_needs_trust_but_a_named_one_does_not(cwd: Path) -> None:
    marker = cwd / "imported.txt"
    mod = marker_module(cwd, marker)
    kw = {"class_names": NAMES, "input_size": (3, 32, 32), "random_init": True}
    with pytest.raises(SpecError, match=f"plan.toml names factory '{mod}:build'"):
        load_model(f"{mod}:build", spec_origin="plan.toml", **kw)
    assert not marker.exists()
    assert load_model(f"{mod}:build", spec_origin="plan.toml", trust_code=True, **kw)
    assert marker.exists()
    # Named by the caller (the CLI's --model, Python): the caller's own code, no flag.
    assert load_model(f"{mod}:build", **kw).num_classes == 3


# -- sys.path ------------------------------------------------------------------------------
def test_sys_path_is_restored_and_cwd_packages_do_not_shadow(cwd: Path) -> None:
    fake = cwd / "captum"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('fake captum')\n")
    mod = marker_module(cwd, cwd / "m.txt")
    before = list(sys.path)
    model = load_model(f"{mod}:build", class_names=NAMES, input_size=(3, 32, 32), random_init=True)
    assert model.num_classes == 3 and mod in sys.modules  # imported from cwd, as python -m does
    assert sys.path == before
    found = importlib.machinery.PathFinder.find_spec("captum", sys.path)
    assert found is None or not str(found.origin).startswith(str(cwd))


def test_a_factory_may_import_cwd_helpers_when_called(cwd: Path) -> None:
    helper = f"trustmod_{uuid.uuid4().hex[:8]}"
    (cwd / f"{helper}.py").write_text("from raigate.zoo import small_cnn as NET\n")
    mod = f"trustmod_{uuid.uuid4().hex[:8]}"
    (cwd / f"{mod}.py").write_text(
        f"def build(num_classes=10):\n    import {helper}\n    return {helper}.NET(num_classes)\n"
    )
    before = list(sys.path)
    model = load_model(f"{mod}:build", class_names=NAMES, input_size=(3, 32, 32), random_init=True)
    assert model.num_classes == 3 and helper in sys.modules and sys.path == before


# -- random init ---------------------------------------------------------------------------
def test_factory_without_weights_is_refused_unless_random_init(cwd: Path) -> None:
    kw = {"class_names": NAMES, "input_size": (3, 32, 32)}
    with pytest.raises(ModelLoadError, match=r"names no weights.*--random-init") as err:
        load_model("raigate.zoo:small_cnn", **kw)
    assert "\n" not in str(err.value)
    spec = spec_file(cwd, "raigate.zoo:small_cnn")
    with pytest.raises(ModelLoadError, match="randomly initialised"):
        load_model(str(spec))
    model = load_model(str(spec), random_init=True)
    assert model.random_init and model.display_name.endswith(" (RANDOM INIT)")
    # Weights make it a trained model again, whatever the flag says.
    save_file(small_cnn(3).state_dict(), str(cwd / "w.safetensors"))
    with_weights = load_model(str(spec), weights=cwd / "w.safetensors", random_init=True)
    assert not with_weights.random_init and with_weights.describe()["random_init"] is False


# -- class names inferred from the data ---------------------------------------------------
def test_inferred_class_names_mismatch_names_the_cause(cwd: Path) -> None:
    data = load_data("demo:test", limit=8)  # 2 labels
    ten = cwd / "ten.json"  # a spec without class names, its head fixed at 10
    ten.write_text(json.dumps({"factory": "raigate.zoo:small_cnn", "kwargs": {"num_classes": 10}}))
    with pytest.raises(ModelLoadError) as err:
        load_model(str(ten), data=data, random_init=True)
    msg = str(err.value)
    assert "outputs 10 logits but the data has 2 labels (class names taken from the data)" in msg
    assert "--class-names" in msg and "--label-map" in msg
    # Names the user gave are not "taken from the data": the old message stays.
    with pytest.raises(ModelLoadError, match="outputs 10 logits but 3 class names were given"):
        load_model(str(ten), data=data, class_names=NAMES, random_init=True)
    # TorchScript carries no names either.
    ts = cwd / "ten.pt"
    torch.jit.script(small_cnn(10).eval()).save(str(ts))
    with pytest.raises(ModelLoadError, match="the data has 2 labels"):
        load_model(str(ts), data=data)


# -- one factory helper for loaders and DP-SGD training -----------------------------------
BAD_FACTORIES = """
def not_a_module(num_classes=10):
    return 3

def raises(num_classes=10):
    raise ValueError("no such width")
"""


@pytest.mark.parametrize(
    ("attr", "match"),
    [
        ("not_a_module", r"returned a int, not a torch\.nn\.Module"),
        ("raises", r"calling trustmod_\w+:raises\(num_classes=2\) failed: ValueError: no such"),
    ],
)
def test_loader_and_dp_training_share_factory_errors(cwd: Path, attr: str, match: str) -> None:
    from raigate.privacy.train import train_private

    mod = f"trustmod_{uuid.uuid4().hex[:8]}"
    (cwd / f"{mod}.py").write_text(BAD_FACTORIES)
    data = load_data("demo:train", limit=16)
    with pytest.raises(ModelLoadError, match=match):
        load_model(f"{mod}:{attr}", data=data, random_init=True)
    with pytest.raises(ModelLoadError, match=match):
        train_private(f"{mod}:{attr}", data, epochs=1, progress=False)


def test_dp_training_from_a_json_spec_follows_the_trust_rule(cwd: Path) -> None:
    from raigate.privacy.train import train_private

    marker = cwd / "imported.txt"
    spec = spec_file(cwd, f"{marker_module(cwd, marker)}:build")
    data = load_data("demo:train", limit=16)
    with pytest.raises(SpecError, match="--trust-code"):
        train_private(str(spec), data, epochs=1, progress=False)
    assert not marker.exists()


def test_hf_folder_never_runs_remote_code(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "vit"
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=37, num_labels=3,
        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    marker = tmp_path / "remote.txt"
    (folder / "evil.py").write_text(  # subclasses: the control below must not alter ViT itself
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import ViTConfig, ViTForImageClassification\n"
        "class EvilConfig(ViTConfig):\n    model_type = 'evilnet'\n"
        "class EvilModel(ViTForImageClassification):\n    config_class = EvilConfig\n"
    )
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    # A known model_type: the folder's code is ignored and transformers' own ViT is built.
    model = load_model(f"hf:{folder}")
    assert type(model.net.model).__name__ == "ViTForImageClassification"
    assert model.net.model.__class__.__module__.startswith("transformers.models.vit")
    # An unknown one that only the folder's code could build: refused.
    cfg["model_type"] = "evilnet"
    cfg["auto_map"]["AutoConfig"] = "evil.EvilConfig"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="contains custom code"):
        load_model(f"hf:{folder}")
    assert not marker.exists()
    # The control: transformers with trust_remote_code=True does run it.
    transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    assert marker.read_text() == "ran"


def test_net_helper_accepts_kwargs_and_num_classes() -> None:
    net = build_network("raigate.zoo:small_cnn", kwargs={"norm": "group"}, num_classes=4)
    assert isinstance(net, nn.Module) and net(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    # kwargs win over the injected num_classes
    net = build_network("raigate.zoo:small_cnn", kwargs={"num_classes": 6}, num_classes=4)
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 6)
