"""Every spec kind through ``load_model``: factory (+weights), TorchScript, torch.export,
Hugging Face folders and raigate JSON specs, including the error paths users will hit."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from raigate.errors import ConfigError, ModelLoadError, SpecError
from raigate.models import load_model, state_digest
from raigate.models.base import module_tensors
from raigate.models.loaders import LOADERS, write_model_spec
from raigate.zoo import resnet20, small_cnn

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
NAMES = ("cat", "dog", "eel")


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a uniquely named module into a fresh cwd, as a user's own code would be."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"usernet_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


NET_SOURCE = """
    import torch
    from torch import nn

    CALLS = []

    def build(num_classes=10, width=8):
        CALLS.append(num_classes)
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )

    def fixed():
        return build(num_classes=5)

    NOT_CALLABLE = 3
"""


def test_loader_registry_has_every_kind() -> None:
    assert set(LOADERS) == {"factory", "torchscript", "export", "hf", "json", "onnx", "pyfn"}


# -- factory -------------------------------------------------------------------------------
def test_factory_from_cwd_gets_num_classes(user_module) -> None:
    mod = user_module(NET_SOURCE)
    model = load_model(f"{mod}:build", class_names=NAMES, input_size=(3, 16, 16), random_init=True)
    assert sys.modules[mod].CALLS == [3]
    assert model.class_names == NAMES and model.input_shape == (3, 16, 16)
    assert model.logits(torch.rand(4, 3, 16, 16)).shape == (4, 3)
    assert model.source == "factory" and model.spec == f"{mod}:build"
    assert model.files == [] and model.capabilities.conv
    assert not model.net.training
    assert model.random_init and model.describe()["random_init"] is True
    assert model.display_name == f"{mod}:build (RANDOM INIT)"


def test_factory_without_num_classes_must_fit(user_module) -> None:
    mod = user_module(NET_SOURCE)
    names5 = tuple("abcde")
    kw = {"input_size": (3, 8, 8), "random_init": True}
    assert load_model(f"{mod}:fixed", class_names=names5, **kw).num_classes == 5
    with pytest.raises(ModelLoadError, match="outputs 5 logits but 3 class names"):
        load_model(f"{mod}:fixed", class_names=NAMES, **kw)


def test_factory_with_weights_pt_and_safetensors_same_digest(tmp_path: Path) -> None:
    net = resnet20(3)
    with torch.no_grad():
        net.bn1.running_mean.uniform_()  # non-default buffers count too
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save({"state_dict": net.state_dict(), "epoch": 2}, pt)
    save_file(net.state_dict(), str(st))
    kw = {"class_names": NAMES, "input_size": (3, 32, 32), "mean": MEAN, "std": STD}
    a = load_model("raigate.zoo:resnet20", weights=pt, **kw)
    b = load_model("raigate.zoo:resnet20", weights=st, **kw)
    expected = state_digest(module_tensors(net))
    assert a.digest == b.digest == expected
    assert not a.random_init and a.describe()["random_init"] is False and a.display_name == a.spec
    assert a.files[0]["path"] == str(pt) and a.files[0]["bytes"] == pt.stat().st_size
    assert len(a.files[0]["sha256"]) == 64
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(a.logits(x), net(_normalized(x)), rtol=0, atol=1e-6)
    assert a.capabilities.batchnorm


def test_factory_weights_with_wrong_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(small_cnn(3, norm="batch").state_dict(), str(path))
    with pytest.raises(ModelLoadError) as err:
        load_model("raigate.zoo:resnet20", weights=path, class_names=NAMES, input_size=(3, 32, 32))
    msg = str(err.value)
    assert str(path) in msg and "missing keys (conv1.weight" in msg
    assert "unexpected keys (features." in msg


def test_factory_errors_name_module_and_option(user_module) -> None:
    mod = user_module(NET_SOURCE)
    kw = {"class_names": NAMES, "input_size": (3, 8, 8), "random_init": True}
    with pytest.raises(SpecError, match=r"cannot import module 'no_such_mod_xyz'.*PYTHONPATH"):
        load_model("no_such_mod_xyz:build", **kw)
    with pytest.raises(SpecError, match=f"module '{mod}' .* has no attribute 'nope'"):
        load_model(f"{mod}:nope", **kw)
    with pytest.raises(SpecError, match="not a callable factory"):
        load_model(f"{mod}:NOT_CALLABLE", **kw)
    broken = user_module("import not_installed_pkg_xyz\n")
    with pytest.raises(SpecError, match=f"importing '{broken}'.*not_installed_pkg_xyz"):
        load_model(f"{broken}:build", **kw)
    with pytest.raises(SpecError, match="--class-names a,b"):
        load_model(f"{mod}:build", input_size=(3, 8, 8), random_init=True)
    with pytest.raises(SpecError, match="--input-size"):
        load_model(f"{mod}:build", class_names=NAMES, random_init=True)


def test_factory_that_fails_on_the_input_size(user_module) -> None:
    with pytest.raises(ModelLoadError, match=r"fails on an input of shape \[2, 3, 64, 64\]"):
        load_model(
            "raigate.zoo:captum_cifar_net", class_names=NAMES, input_size=(3, 64, 64),
            random_init=True,
        )  # fmt: skip


# -- TorchScript ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_logits_match_original(tmp_path: Path, how: str) -> None:
    torch.manual_seed(1)
    net = small_cnn(3, norm="batch").eval()
    example = torch.rand(2, 3, 32, 32)
    scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, example)
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    model = load_model(str(path), class_names=NAMES, input_size=(3, 32, 32), mean=MEAN, std=STD)
    x = torch.rand(5, 3, 32, 32)
    torch.testing.assert_close(model.logits(x), net(_normalized(x)), rtol=0, atol=1e-6)
    assert model.source == "torchscript" and model.files[0]["path"] == str(path)
    assert model.digest == state_digest(module_tensors(net))
    assert model.capabilities.conv and model.capabilities.batchnorm


def test_torchscript_spec_given_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(small_cnn(3).state_dict(), path)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(path), class_names=NAMES, input_size=(3, 32, 32))
    msg = str(err.value)
    assert msg.startswith(f"{path} is not a TorchScript archive")
    assert f"pkg.module:factory --weights {path}" in msg


def test_torchscript_missing_file_and_metadata(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope.pt"), class_names=NAMES, input_size=(3, 32, 32))
    path = tmp_path / "m.pt"
    torch.jit.script(small_cnn(3)).save(str(path))
    with pytest.raises(SpecError, match="--class-names"):
        load_model(str(path), input_size=(3, 32, 32))


# -- torch.export --------------------------------------------------------------------------
def _export(net: nn.Module, path: Path, *, dynamic: bool) -> None:
    example = (torch.rand(4, 3, 32, 32),)
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(net.eval(), example, dynamic_shapes=shapes), str(path))


@pytest.mark.parametrize("dynamic", [True, False])
def test_export_logits_match_original(tmp_path: Path, dynamic: bool) -> None:
    torch.manual_seed(2)
    net = small_cnn(3, norm="batch").eval()
    path = tmp_path / "model.pt2"
    _export(net, path, dynamic=dynamic)
    # The input size comes from the program itself; class names never do.
    model = load_model(str(path), class_names=NAMES, mean=MEAN, std=STD)
    assert model.input_shape == (3, 32, 32)
    for batch in (1, 4, 7):  # a fixed-batch program runs in padded chunks
        x = torch.rand(batch, 3, 32, 32)
        torch.testing.assert_close(model.logits(x), net(_normalized(x)), rtol=0, atol=1e-6)
    assert model.capabilities.batchnorm and model.capabilities.conv
    assert model.source == "export" and model.files[0]["path"] == str(path)
    model.train()  # exported graphs refuse .train()/.eval(); the adapter must not
    assert not model.training
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model.logits(x).sum().backward()  # gradients reach the pixels (white-box attacks)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_export_conflicting_input_size(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    _export(small_cnn(3), path, dynamic=True)
    with pytest.raises(ConfigError, match="input size"):
        load_model(str(path), class_names=NAMES, input_size=(3, 64, 64))


def test_export_rejects_other_files(tmp_path: Path) -> None:
    sd = tmp_path / "weights.pt2"
    torch.save(small_cnn(3).state_dict(), sd)
    with pytest.raises(ModelLoadError, match=r"not a torch\.export archive.*--weights"):
        load_model(str(sd), class_names=NAMES)
    ts = tmp_path / "scripted.pt2"
    torch.jit.script(small_cnn(3)).save(str(ts))
    with pytest.raises(ModelLoadError, match="TorchScript archive"):
        load_model(str(ts), class_names=NAMES)


def test_export_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "model.pt2"
    _export(small_cnn(3), good, dynamic=True)
    evil = tmp_path / "evil.pt2"
    shutil.copy(good, evil)
    with zipfile.ZipFile(evil, "a") as z:
        z.writestr("model/data/constants/opaque_obj_0", b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(ModelLoadError, match="pickled Python objects"):
        load_model(str(evil), class_names=NAMES)


# -- Hugging Face --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("vit")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=37, num_labels=3,
        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
    )  # fmt: skip
    torch.manual_seed(3)
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(
        image_mean=list(MEAN), image_std=list(STD), size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder


def test_hf_folder_loads_with_names_size_and_normalization(vit_dir: Path) -> None:
    from transformers import ViTForImageClassification

    model = load_model(f"hf:{vit_dir}")
    assert model.class_names == NAMES and model.input_shape == (3, 32, 32)
    reference = ViTForImageClassification.from_pretrained(vit_dir).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=_normalized(x)).logits
    torch.testing.assert_close(model.logits(x), expected, rtol=0, atol=1e-5)
    assert model.digest == state_digest(module_tensors(reference))
    names = {Path(f["path"]).name for f in model.files}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert model.source == "hf" and not model.net.training
    # The same names from the dataset are fine; different ones are a conflict.
    assert load_model(f"hf:{vit_dir}", class_names=NAMES).num_classes == 3
    with pytest.raises(ConfigError, match="class names"):
        load_model(f"hf:{vit_dir}", class_names=("a", "b", "c"))
    with pytest.raises(ConfigError, match="input size"):
        load_model(f"hf:{vit_dir}", input_size=(3, 224, 224))


def test_hf_rescale_settings_fold_into_mean_std(vit_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    shutil.copytree(vit_dir, folder)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg.update(do_rescale=False, do_normalize=True, image_mean=[127.5] * 3, image_std=[127.5] * 3)
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    model = load_model(f"hf:{folder}")
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.5] * 3)
    assert model.normalize.std.flatten().tolist() == pytest.approx([0.5] * 3)


def test_hf_errors_name_the_folder_or_file(vit_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"folder .*missing not found"):
        load_model(f"hf:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json not found"):
        load_model(f"hf:{empty}")
    broken = tmp_path / "broken"
    shutil.copytree(vit_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"cannot load .*broken"):
        load_model(f"hf:{broken}")


# -- JSON model specs ----------------------------------------------------------------------
def test_json_spec_round_trip_and_relocation(tmp_path: Path) -> None:
    torch.manual_seed(4)
    net = small_cnn(3, norm="group")
    folder = tmp_path / "run"
    folder.mkdir()
    save_file(net.state_dict(), str(folder / "model.safetensors"))
    spec = write_model_spec(
        folder / "model.json", factory="raigate.zoo:small_cnn", kwargs={"norm": "group"},
        weights=folder / "model.safetensors", class_names=NAMES, input_shape=(3, 32, 32),
        mean=MEAN, std=STD,
    )  # fmt: skip
    doc = json.loads(spec.read_text())
    assert doc["weights"] == "model.safetensors" and doc["weights_sha256"].startswith("sha256:")
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)  # weights are relative to the spec: the pair moves together
    model = load_model(str(moved / "model.json"))
    assert model.class_names == NAMES and model.input_shape == (3, 32, 32)
    assert model.digest == state_digest(module_tensors(net))
    assert model.source == "json" and len(model.files) == 2
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.logits(x), net.eval()(_normalized(x)), rtol=0, atol=1e-6)
    # Repeating the same values on the command line is fine; changing them is not.
    assert load_model(str(moved / "model.json"), class_names=NAMES, mean=MEAN).num_classes == 3
    with pytest.raises(ConfigError, match="class names"):
        load_model(str(moved / "model.json"), class_names=("x", "y", "z"))
    with pytest.raises(ConfigError, match="mean"):
        load_model(str(moved / "model.json"), mean=(0.5, 0.5, 0.5))


def test_json_spec_detects_swapped_weights(tmp_path: Path) -> None:
    save_file(small_cnn(3).state_dict(), str(tmp_path / "w.safetensors"))
    spec = write_model_spec(
        tmp_path / "m.json", factory="raigate.zoo:small_cnn",
        weights=tmp_path / "w.safetensors", class_names=NAMES, input_shape=(3, 32, 32),
    )  # fmt: skip
    save_file(small_cnn(3).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="do not match weights_sha256"):
        load_model(str(spec))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"kwargs": {}}', "field 'factory'"),
        ('{"factory": "nope"}', "field 'factory'.*pkg.module:factory"),
        (
            '{"factory": "raigate.zoo:small_cnn", "input_shape": [3, 32]}',
            "field 'input_shape'.*C,H,W",
        ),
        ('{"factory": "raigate.zoo:small_cnn", "colour": "red"}', "field 'colour'"),
    ],
)
def test_json_spec_bad_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(content)
    with pytest.raises(ModelLoadError, match=match) as err:
        load_model(str(path), class_names=NAMES, input_size=(3, 32, 32))
    assert str(path) in str(err.value)


def test_json_spec_with_wrong_weights(tmp_path: Path) -> None:
    save_file(small_cnn(3).state_dict(), str(tmp_path / "w.safetensors"))
    spec = tmp_path / "m.json"
    spec.write_text(json.dumps({"factory": "raigate.zoo:resnet20", "weights": "w.safetensors"}))
    with pytest.raises(ModelLoadError, match=r"w\.safetensors do not fit CifarResNet"):
        load_model(str(spec), class_names=NAMES, input_size=(3, 32, 32))
