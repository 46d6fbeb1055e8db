"""The deployed preprocessing: parsing, the geometry on decoded images, the value transform
inside the model, and its round trip through model spec files, plans and HF processors.

Each computed image is compared with an independent computation: index arithmetic for
nearest resizes and crops, numpy for the value transform, PIL-free closed forms.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import raigate
from cli_helpers import assert_user_error, invoke
from raigate.errors import ConfigError
from raigate.models.loaders import write_model_spec
from raigate.models.preprocess import (
    Preprocess,
    ValueTransform,
    apply_geometry,
    parse_preprocess,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_forms_and_defaults() -> None:
    p = parse_preprocess("resize=256x240, resize-mode=exact ,crop=224,value_scale=255,layout=NHWC")
    assert p.resize == [256, 240] and p.crop == [224, 224]
    assert p.value_scale == 255.0 and p.layout == "nhwc"
    assert parse_preprocess(None).is_default
    assert parse_preprocess({"crop": 32}).as_dict() == {"crop": [32, 32]}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sharpen=1", "unknown key"),
        ("value_scale=100", "value_scale"),
        ("resize=0", "positive"),
        ("crop", "not key=value"),
        ("interpolation=lanczos", "interpolation"),
        ("resize=1,2,3", "resize"),
    ],
)
def test_parse_errors_are_one_line(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_preprocess(text)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_shorter_side_resize_and_center_crop_by_index() -> None:
    """4x6 image, shorter side to 2 with nearest: rows 0,2 and columns 0,2,4 (scale 2); a
    2x2 center crop of the 2x3 result starts at column round(0.5) = 0 (torchvision's rule)."""
    x = torch.arange(3 * 4 * 6, dtype=torch.float32).reshape(3, 4, 6) / 100
    p = Preprocess(resize=[2], resize_mode="shorter", interpolation="nearest", crop=[2, 2])
    out = apply_geometry(x, p, (2, 2))
    expected = x[:, [0, 2]][:, :, [0, 2, 4]][:, :, 0:2]
    assert torch.equal(out, expected)
    # a portrait image: the width is the shorter side, the height scales and truncates
    tall = torch.rand(3, 10, 4)
    q = Preprocess(resize=[2], resize_mode="shorter", interpolation="nearest", crop=[4, 2])
    assert apply_geometry(tall, q, (4, 2)).shape == (3, 4, 2)  # 10*2/4 = 5 rows, crop 4


def test_crop_offsets_match_hand_computation() -> None:
    x = torch.rand(3, 9, 7)
    p = Preprocess(crop=[4, 4])
    out = apply_geometry(x, p, (4, 4))
    top, left = round((9 - 4) / 2), round((7 - 4) / 2)  # 2 (2.5 rounds to even), 2 (1.5 -> 2)
    assert torch.equal(out, x[:, top : top + 4, left : left + 4])


def test_value_transform_matches_numpy() -> None:
    from raigate.models.base import Normalize

    mean, std = [103.9, 116.8, 123.7], [57.0, 57.1, 58.4]  # BGR order, 0-255 units
    p = Preprocess(channel_order="bgr", value_scale=255, layout="nhwc")
    t = ValueTransform(Normalize(mean, std), p)
    x = torch.rand(2, 3, 5, 4)
    got = t(x).numpy()
    a = x.numpy()[:, ::-1] * 255.0
    a = (a - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    assert np.allclose(got, a.transpose(0, 2, 3, 1), atol=1e-4)


def test_model_applies_values_inside_and_checks_geometry() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    p = Preprocess(channel_order="bgr", value_scale=255)
    model = raigate.Model(net, class_names=["a", "b"], input_shape=(3, 8, 8), preprocess=p)
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(model.logits(x), net(x.flip(1) * 255), atol=1e-4)
    assert "BGR -> x255 -> NCHW 3x8x8" in model.pipeline
    with pytest.raises(ConfigError, match="ends at 16x16"):
        raigate.Model(net, class_names=["a", "b"], input_shape=(3, 8, 8),
                      preprocess=Preprocess(crop=[16, 16]))  # fmt: skip
    with pytest.raises(ConfigError, match="without crop"):
        raigate.Model(net, class_names=["a", "b"], input_shape=(3, 8, 8),
                      preprocess=Preprocess(resize=[8], resize_mode="shorter"))  # fmt: skip


def _folder(root: Path, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / label / f"{i}.png")
    return root


def test_dataset_decodes_once_then_applies_the_models_geometry(tmp_path: Path) -> None:
    from raigate.audit.evaluate import prepare
    from raigate.data.files import read_image

    root = _folder(tmp_path / "imgs", (20, 30))
    data = raigate.load_data(f"folder:{root}")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    p = parse_preprocess("resize=18,resize_mode=shorter,interpolation=bicubic,crop=16")
    model = raigate.Model(net, class_names=["a", "b"], input_shape=(3, 16, 16), preprocess=p)
    view = prepare(model, data)
    x, _, _ = view[0]
    native = read_image(root / "a" / "0.png")  # 20x30 -> 18x27 -> crop 16x16
    resized = torch.nn.functional.interpolate(
        native[None], size=(18, 27), mode="bicubic", antialias=True, align_corners=False
    )[0].clamp(0, 1)
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, resized[:, 1:17, 6:22], atol=1e-6)  # top round(1)=1, left round(5.5)=6


def test_spec_file_round_trip_and_conflict(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from raigate.zoo import small_cnn

    net = small_cnn(num_classes=2)
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    p = parse_preprocess("resize=36,resize_mode=shorter,crop=32,channel_order=bgr")
    spec = write_model_spec(tmp_path / "m.json", factory="raigate.zoo:small_cnn",
                            weights=tmp_path / "w.safetensors", class_names=["a", "b"],
                            input_shape=(3, 32, 32), preprocess=p)  # fmt: skip
    doc = json.loads(spec.read_text())
    assert doc["preprocess"] == {"resize": [36, 36], "resize_mode": "shorter", "crop": [32, 32],
                                 "channel_order": "bgr"}  # fmt: skip
    model = raigate.load_model(str(spec))
    assert model.preprocess == p
    with pytest.raises(ConfigError, match="differs from preprocess"):
        raigate.load_model(str(spec), preprocess="crop=32")
    code, out = invoke("models", "inspect", str(spec))
    assert code == 0, out
    assert "pipeline     decode RGB -> resize shorter side to 36" in out
    assert "mode         white-box" in out


def test_cli_and_plan_take_the_same_keys(tmp_path: Path) -> None:
    code, out = invoke("models", "inspect", "raigate.zoo:small_cnn", "--random-init",
                       "--class-names", "a,b", "--input-size", "3,32,32",
                       "--preprocess", "crop=32,value_scale=2")  # fmt: skip
    assert_user_error(code, out, "value_scale")
    from raigate.config import load_plan

    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[model]\nspec = "raigate.zoo:small_cnn"\nrandom_init = true\n'
        '[model.preprocess]\ncrop = 32\nchannel_order = "bgr"\n'
        '[data]\nspec = "demo:test"\n[checks.evaluate]\n'
    )
    assert load_plan(plan).model.preprocess == {"crop": [32, 32], "channel_order": "bgr"}
    plan.write_text(plan.read_text().replace('channel_order = "bgr"', 'channels = "bgr"'))
    with pytest.raises(ConfigError, match="unknown key"):
        load_plan(plan)


def test_hf_processor_geometry(tmp_path: Path) -> None:
    from raigate.models.hf import read_geometry

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": 256}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    }))  # fmt: skip
    g = read_geometry(tmp_path)
    assert g == Preprocess(resize=[256], resize_mode="shorter", crop=[224, 224],
                           interpolation="bicubic")  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 224}))
    assert read_geometry(tmp_path) is None


def test_torchscript_taking_nhwc_with_layout(tmp_path: Path) -> None:
    """A torch network that takes NHWC (as exported from a TF-style pipeline): the load-time
    check and every forward pass feed it NHWC."""

    class Nhwc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8 * 8 * 3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] == 3
            return self.fc(x.reshape(x.shape[0], -1))

    net = Nhwc()
    path = tmp_path / "nhwc.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    model = raigate.load_model(str(path), class_names=["a", "b"], input_size=(3, 8, 8),
                               preprocess="layout=nhwc")  # fmt: skip
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(model.logits(x), net(x.permute(0, 2, 3, 1)), atol=1e-6)
