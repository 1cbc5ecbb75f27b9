"""Architecture names, custom factories, the weights cache and the first convolution."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from recipec.errors import ModelError, WeightsUnavailableError
from recipec.model import families, pretrained, zoo
from recipec.weights.adapt import adapt_input_channels

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def make_tiny(num_classes: int = 10, width: int = 8) -> nn.Module:
    return TinyNet(num_classes, width)


def make_not_a_module() -> dict[str, Any]:
    return {"conv": nn.Conv2d(3, 8, 3)}


class Factories:
    tiny = staticmethod(make_tiny)


NOT_CALLABLE = 42


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("RECIPEC_ALLOW_DOWNLOAD", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _cache(torch_home: Path, obj: Any, name: str = "resnet18-f37072fd.pth") -> Path:
    torch_home.mkdir(parents=True, exist_ok=True)
    torch.save(obj, torch_home / name)
    return torch_home / name


# --------------------------------------------------------------------------- names


def test_list_architectures_is_the_classification_zoo() -> None:
    names = zoo.list_architectures()
    assert names == sorted(names) and len(names) == 80
    assert {"resnet18", "vit_b_16", "swin_v2_t", "maxvit_t", "squeezenet1_1"} <= set(names)
    assert not [n for n in names if n.startswith(("fasterrcnn", "fcn", "deeplab", "raft", "r3d", "quantized"))]


@pytest.mark.parametrize(("arch", "family"), [
    ("resnet18", "resnet"), ("wide_resnet50_2", "resnet"), ("resnext101_64x4d", "resnet"), ("vgg16_bn", "vgg"),
    ("vit_b_16", "vit"), ("swin_v2_t", "swin"), ("convnext_tiny", "convnext"), ("efficientnet_v2_s", "efficientnet"),
    ("mobilenet_v3_small", "mobilenet"), ("densenet121", "densenet"), ("regnet_y_400mf", "regnet"),
    ("googlenet", "googlenet"), ("inception_v3", "inception"), ("shufflenet_v2_x1_0", "shufflenet"),
    ("squeezenet1_0", "squeezenet"), ("mnasnet0_5", "mnasnet"), ("alexnet", "alexnet"), ("maxvit_t", "maxvit"),
    ("mypkg.nets:make", "custom"),
])
def test_family_of(arch: str, family: str) -> None:
    assert zoo.family_of(arch) == family


@pytest.mark.parametrize(("arch", "suggestion"), [("resnet181", "resnet18"), ("ResNet18", "resnet18"),
                                                   ("vit_b16", "vit_b_16")])
def test_unknown_architecture_suggests(arch: str, suggestion: str) -> None:
    with pytest.raises(ModelError, match=f"unknown architecture '{arch}'; did you mean '{suggestion}'") as exc:
        families.build_architecture(arch)
    assert exc.value.paths == [("model", "arch")]


def test_builds_random_and_passes_kwargs() -> None:
    model = families.build_architecture("resnet18", {"num_classes": 3})
    assert isinstance(model, torchvision.models.ResNet) and model.fc.out_features == 3


def test_bad_torchvision_kwargs() -> None:
    with pytest.raises(ModelError, match="unexpected keyword argument 'nope'") as exc:
        families.build_architecture("resnet18", {"nope": 1})
    assert exc.value.paths == [("model", "kwargs")]
    with pytest.raises(ModelError, match="model.weights") as exc:
        families.build_architecture("resnet18", {"weights": "IMAGENET1K_V1"})
    assert exc.value.paths == [("model", "kwargs", "weights")]
    with pytest.raises(ModelError, match="indivisible by patch size"):
        families.build_architecture("vit_b_16", {"image_size": 30})


def test_googlenet_and_inception_defaults() -> None:
    plain = families.build_architecture("googlenet")
    assert plain.aux_logits is False and plain.aux1 is None and plain.transform_input is False
    assert families.build_architecture("googlenet", {"aux_logits": True}).aux1 is not None
    assert families.build_architecture("googlenet", pretrained=True).transform_input is True
    inception = families.build_architecture("inception_v3")
    assert inception.aux_logits is False and inception.AuxLogits is None


# --------------------------------------------------------------------------- custom factories


def test_custom_factory_with_kwargs() -> None:
    model = families.build_architecture("tests.model.test_zoo:make_tiny", {"num_classes": 3, "width": 4})
    assert isinstance(model, TinyNet) and model.fc.out_features == 3 and model.conv.out_channels == 4
    assert isinstance(families.build_architecture("tests.model.test_zoo:Factories.tiny"), TinyNet)


def test_custom_factory_module_missing() -> None:
    with pytest.raises(ModelError, match="cannot import module 'tests.model.no_such_module'.*No module named") as exc:
        families.build_architecture("tests.model.no_such_module:make")
    assert exc.value.paths == [("model", "arch")]


def test_custom_factory_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_nets.py").write_text(textwrap.dedent("""
        import recipec_missing_dependency
        def make():
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="cannot import module 'broken_nets'.*recipec_missing_dependency"):
        families.build_architecture("broken_nets:make")


@pytest.mark.parametrize(("arch", "message"), [
    ("tests.model.test_zoo:make_tiyn", "has no attribute 'make_tiyn'.*did you mean 'make_tiny'"),
    ("tests.model.test_zoo:Factories.small", "'Factories' has no attribute 'small'"),
    ("tests.model.test_zoo:NOT_CALLABLE", "is a int, not a callable factory"),
    ("tests.model.test_zoo:make_not_a_module", "returned a dict, not a torch.nn.Module"),
])
def test_custom_factory_errors(arch: str, message: str) -> None:
    with pytest.raises(ModelError, match=message) as exc:
        families.build_architecture(arch)
    assert exc.value.paths == [("model", "arch")]


def test_custom_factory_bad_kwargs() -> None:
    with pytest.raises(ModelError, match="rejected its arguments.*unexpected keyword argument 'depth'") as exc:
        families.build_architecture("tests.model.test_zoo:make_tiny", {"depth": 3})
    assert exc.value.paths == [("model", "kwargs")]


# --------------------------------------------------------------------------- weights


def test_resolve_weights() -> None:
    weights = pretrained.resolve_weights("resnet18", "IMAGENET1K_V1")
    assert weights is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert pretrained.resolve_weights("resnet50", "DEFAULT") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2


def test_unknown_weights_lists_names() -> None:
    with pytest.raises(ModelError, match="unknown weights 'IMAGENET1K_V3' for resnet18; .*available: IMAGENET1K_V1, "
                                         "DEFAULT") as exc:
        pretrained.resolve_weights("resnet18", "IMAGENET1K_V3")
    assert exc.value.paths == [("model", "weights")]
    with pytest.raises(ModelError, match="did you mean 'IMAGENET1K_V1'"):
        pretrained.resolve_weights("resnet18", "imagenet1k_v1")
    with pytest.raises(ModelError, match="custom factory and has no torchvision weights"):
        pretrained.resolve_weights("tests.model.test_zoo:make_tiny", "DEFAULT")
    with pytest.raises(ModelError, match="did you mean 'resnet18'"):
        pretrained.resolve_weights("resnet181", "DEFAULT")


def test_normalization_of() -> None:
    assert pretrained.normalization_of(torchvision.models.ResNet18_Weights.IMAGENET1K_V1) == IMAGENET_NORM
    assert pretrained.normalization_of(torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1) == IMAGENET_NORM
    assert pretrained.normalization_of(None) is None


def test_cache_path_follows_torch_home(torch_home: Path) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert pretrained.weights_cache_path(weights) == torch_home / "resnet18-f37072fd.pth"


def test_loads_cached_weights(torch_home: Path) -> None:
    expected = torchvision.models.resnet18(weights=None).state_dict()
    path = _cache(torch_home, expected)

    state_dict, info = pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")

    assert list(state_dict) == list(expected)
    assert all(torch.equal(state_dict[k], v) for k, v in expected.items())
    assert info == pretrained.WeightsInfo(
        name="ResNet18_Weights.IMAGENET1K_V1", url=RESNET18_URL, path=path, sha256_prefix="f37072fd",
        num_params=11689512, num_categories=1000, normalization=IMAGENET_NORM,
        recipe="https://github.com/pytorch/vision/tree/main/references/classification#resnet", license=None)
    assert pretrained.load_pretrained_state_dict("resnet18", "DEFAULT")[1].name == "ResNet18_Weights.IMAGENET1K_V1"


def test_missing_weights_say_where_to_put_them(torch_home: Path) -> None:
    expected = (f"weights ResNet18_Weights.IMAGENET1K_V1 are not in the local cache: expected "
                f"{torch_home / 'resnet18-f37072fd.pth'}; download {RESNET18_URL} there (or set TORCH_HOME), "
                "or set model.weights: null")
    with pytest.raises(WeightsUnavailableError) as exc:
        pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")
    assert exc.value.problems == [f"model.weights: {expected}"]


def test_download_only_when_allowed(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, str | None]] = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        torch.save({"w": torch.ones(2)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(WeightsUnavailableError):
        pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")
    assert calls == []

    monkeypatch.setenv("RECIPEC_ALLOW_DOWNLOAD", "1")
    state_dict, _ = pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")
    assert calls == [(RESNET18_URL, str(torch_home / "resnet18-f37072fd.pth"), "f37072fd")]
    assert torch.equal(state_dict["w"], torch.ones(2))


def test_failed_download(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("RECIPEC_ALLOW_DOWNLOAD", "1")
    with pytest.raises(WeightsUnavailableError, match=f"could not be downloaded from {RESNET18_URL}.*unreachable"):
        pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")


@pytest.mark.parametrize("zipped", [True, False])
def test_corrupt_cache_file(torch_home: Path, zipped: bool) -> None:
    path = torch_home / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path, _use_new_zipfile_serialization=zipped)
    path.write_bytes(path.read_bytes()[: 4096])
    with pytest.raises(ModelError, match=f"cached weights {re.escape(str(path))} are corrupt or not a torch "
                                         f"checkpoint .*; delete the file and download {RESNET18_URL} again") as exc:
        pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")
    assert not isinstance(exc.value, WeightsUnavailableError)


def test_cache_file_that_is_not_a_state_dict(torch_home: Path) -> None:
    _cache(torch_home, [torch.ones(1)])
    with pytest.raises(ModelError, match="hold a list, not a state dict"):
        pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_unexecuted(torch_home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _cache(torch_home, {"fc.weight": torch.ones(1), "payload": _Payload(marker)})

    with pytest.raises(ModelError, match=f"refused to load {re.escape(str(path))}: .* would call io.open "
                                         r"\(nothing was executed\)"):
        pretrained.load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")
    assert not marker.exists()

    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_densenet_legacy_keys_are_renamed(torch_home: Path) -> None:
    model = torchvision.models.densenet121(weights=None)
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in model.state_dict().items()}
    assert any(".norm.1." in k for k in legacy)
    _cache(torch_home, legacy, name="densenet121-a639ec97.pth")

    state_dict, _ = pretrained.load_pretrained_state_dict("densenet121", "IMAGENET1K_V1")
    assert set(state_dict) == set(model.state_dict())


def test_module_versions_survive_for_mnasnet(torch_home: Path) -> None:
    model = torchvision.models.mnasnet0_5(weights=None)
    _cache(torch_home, model.state_dict(), name=os.path.basename(torchvision.models.MNASNet0_5_Weights.DEFAULT.url))
    state_dict, _ = pretrained.load_pretrained_state_dict("mnasnet0_5", "DEFAULT")
    model.load_state_dict(state_dict)  # mnasnet refuses a state dict without its _metadata versions


# --------------------------------------------------------------------------- first convolution


@pytest.mark.parametrize(("arch", "kwargs", "path"), [
    ("resnet18", {}, "conv1"), ("alexnet", {}, "features.0"), ("vit_b_32", {"image_size": 32}, "conv_proj"),
    ("convnext_tiny", {}, "features.0.0"), ("efficientnet_b0", {}, "features.0.0"), ("densenet121", {}, "features.conv0"),
    ("googlenet", {}, "conv1.conv"), ("inception_v3", {}, "Conv2d_1a_3x3.conv"), ("mobilenet_v3_small", {}, "features.0.0"),
    ("regnet_y_400mf", {}, "stem.0"), ("shufflenet_v2_x0_5", {}, "conv1.0"), ("squeezenet1_1", {}, "features.0"),
    ("mnasnet0_5", {}, "layers.0"), ("swin_t", {}, "features.0.0"), ("maxvit_t", {}, "stem.0.0"),
])
def test_first_conv_path(arch: str, kwargs: dict[str, Any], path: str) -> None:
    # test_all_models checks, for every model, that this is the first conv the forward pass calls
    assert zoo.first_conv_path(families.build_architecture(arch, kwargs)) == path


def test_first_conv_path_needs_a_conv() -> None:
    with pytest.raises(ModelError, match="has no Conv2d") as exc:
        zoo.first_conv_path(nn.Sequential(nn.Linear(2, 2)))
    assert exc.value.paths == [("model", "in_channels")]


@pytest.mark.parametrize("channels", [1, 4])
def test_set_input_channels(channels: int) -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    old = model.conv1

    path, adapted = zoo.set_input_channels(model, channels)

    new = model.conv1
    assert (path, adapted) == ("conv1", True) and new is not old
    assert new.in_channels == channels
    assert (new.kernel_size, new.stride, new.padding, new.dilation, new.groups, new.bias) == (
        old.kernel_size, old.stride, old.padding, old.dilation, 1, None)
    assert torch.equal(new.weight, adapt_input_channels(old.weight.detach(), channels))
    with torch.no_grad():
        assert model(torch.randn(2, channels, 32, 32)).shape == (2, 1000)


def test_set_input_channels_keeps_dtype_and_skips_no_change() -> None:
    model = families.build_architecture("tests.model.test_zoo:make_tiny").double()
    assert zoo.set_input_channels(model, 3) == ("conv", False)
    old = model.conv
    old.bias.requires_grad_(False)  # as a frozen group leaves it
    zoo.set_input_channels(model, 1)
    new = model.conv
    assert new is not old and new.weight.dtype == new.bias.dtype == torch.float64
    assert torch.equal(new.weight, adapt_input_channels(old.weight.detach(), 1))  # float64 sums, not float32
    assert torch.equal(new.bias, old.bias)
    assert (new.weight.requires_grad, new.bias.requires_grad) == (True, False)
    assert model(torch.randn(2, 1, 8, 8, dtype=torch.float64)).shape == (2, 10)


def test_set_input_channels_refuses_rgb_transform() -> None:
    with pytest.raises(ModelError, match="transform_input=True"):
        zoo.set_input_channels(families.build_architecture("googlenet", {"transform_input": True}), 1)
