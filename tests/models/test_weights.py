"""Weights files: safe reading (never unpickling code), legacy layouts, strict fitting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from raigate.errors import ModelLoadError
from raigate.models.weights import apply_state_dict, load_state_dict_file
from raigate.zoo import resnet20, small_cnn


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    src = small_cnn(3, norm="batch")
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    dst = small_cnn(3, norm="batch")
    apply_state_dict(dst, load_state_dict_file(path), source=path)
    assert _same_tensors(src.state_dict(), dst.state_dict())


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".th", ".bin", ".ckpt"])
def test_torch_state_dict_round_trip(tmp_path: Path, suffix: str) -> None:
    src = small_cnn(3)
    path = tmp_path / f"w{suffix}"
    torch.save(src.state_dict(), path)
    dst = small_cnn(3)
    apply_state_dict(dst, load_state_dict_file(path), source=path)
    assert _same_tensors(src.state_dict(), dst.state_dict())


def test_legacy_checkpoint_with_dataparallel_prefix(tmp_path: Path) -> None:
    src = resnet20()
    # akamaster's layout: {'state_dict': {'module.…': …}, 'best_prec1': …}, saved before
    # PyTorch 0.4.1 so without num_batches_tracked.
    legacy = {
        f"module.{k}": v for k, v in src.state_dict().items() if "num_batches_tracked" not in k
    }
    path = tmp_path / "legacy.th"
    torch.save({"state_dict": legacy, "best_prec1": 91.0, "epoch": 180}, path)
    sd = load_state_dict_file(path)
    assert not any(k.startswith("module.") for k in sd)
    dst = resnet20()
    apply_state_dict(dst, sd, source=path)
    assert torch.equal(dst.linear.weight, src.linear.weight)


def test_numpy_metrics_beside_the_state_dict_are_fine(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    src = small_cnn(2)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": src.state_dict(), "best_acc": np.float64(0.91)}, path)
    assert _same_tensors(load_state_dict_file(path), src.state_dict())


@pytest.mark.parametrize("key", ["model_state_dict", "model"])
def test_other_nested_layouts(tmp_path: Path, key: str) -> None:
    src = small_cnn(2)
    path = tmp_path / "ckpt.pt"
    torch.save({key: src.state_dict(), "optimizer": {"lr": 0.1}, "epoch": 3}, path)
    assert _same_tensors(load_state_dict_file(path), src.state_dict())


def test_prefix_kept_when_not_every_key_has_it(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"module.a": torch.zeros(1), "b": torch.ones(1)}, path)
    assert set(load_state_dict_file(path)) == {"module.a", "b"}


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    sd = small_cnn(2).state_dict()
    sd["extra.weight"] = torch.zeros(3)
    del sd["classifier.bias"]
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    net = small_cnn(2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ModelLoadError) as err:
        apply_state_dict(net, load_state_dict_file(path), source=path)
    msg = str(err.value)
    assert str(path) in msg
    assert "1 missing keys (classifier.bias)" in msg
    assert "1 unexpected keys (extra.weight)" in msg
    assert "\n" not in msg
    assert _same_tensors(before, net.state_dict())  # nothing copied


def test_long_key_lists_are_truncated(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        apply_state_dict(resnet20(), {"x": torch.zeros(1)}, source="w.pt")
    msg = str(err.value)
    assert "missing keys (conv1.weight, bn1.weight" in msg and "more)" in msg
    assert "1 unexpected keys (x)" in msg


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(small_cnn(3).state_dict(), str(path))
    with pytest.raises(ModelLoadError) as err:
        apply_state_dict(small_cnn(2), load_state_dict_file(path), source=path)
    msg = str(err.value)
    assert "classifier.weight: file [3, 256] vs model [2, 256]" in msg
    assert "classifier.bias: file [3] vs model [2]" in msg
    assert str(path) in msg


class _Payload:
    """Pickles to os.system(...): what a malicious checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_cnn(2).state_dict(), "x": _Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match="pickled code or objects") as err:
        load_state_dict_file(path)
    assert str(path) in str(err.value)
    assert "system" in str(err.value)
    assert "safetensors" in str(err.value)
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(small_cnn(2), path)  # the whole nn.Module, not a state dict
    with pytest.raises(ModelLoadError, match="state dict"):
        load_state_dict_file(path)


def test_torchscript_archive_as_weights_says_use_it_as_spec(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(small_cnn(2)).save(str(path))
    with pytest.raises(ModelLoadError, match="TorchScript archive"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.pt", None, "not found"),
        ("w.npz", b"whatever", "unknown suffix"),
        ("garbage.pt", b"not a zip or pickle", "not a readable torch checkpoint"),
        ("garbage.safetensors", b"\x00\x01garbage", "not a readable safetensors file"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match) as err:
        load_state_dict_file(path)
    assert str(path) in str(err.value)


def test_files_without_a_state_dict(tmp_path: Path) -> None:
    bare = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), bare)
    with pytest.raises(ModelLoadError, match="holds a Tensor, not a state dict"):
        load_state_dict_file(bare)
    meta = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "best_prec1": 90.0}, meta)
    with pytest.raises(ModelLoadError, match=r"holds no tensors .*epoch"):
        load_state_dict_file(meta)
