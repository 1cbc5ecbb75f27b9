"""Finding classifiers by dotted path and replacing them with new heads."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from recipec.errors import ModelError
from recipec.model import families, heads


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
        self.out = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)


def _types(module: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in module]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- build_head


def test_linear_head() -> None:
    head = heads.build_head(512, num_classes=5)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (512, 5)


def test_linear_head_with_dropout_keeps_the_linears_own_keys() -> None:
    head = heads.build_head(512, num_classes=5, dropout=0.3)
    assert isinstance(head, nn.Linear) and head.p == 0.3 and head.out_features == 5
    assert list(head.state_dict()) == ["weight", "bias"]
    x = torch.randn(64, 512)
    plain = nn.Linear(512, 5)
    plain.load_state_dict(head.state_dict())
    assert torch.equal(head.eval()(x), plain(x))  # eval: exactly the Linear
    torch.manual_seed(0)
    dropped = head.train()(x)
    torch.manual_seed(0)
    assert torch.equal(dropped, plain(nn.functional.dropout(x, 0.3, True)))  # train: dropout on the input
    assert not torch.equal(dropped, plain(x))


def test_conv_head_with_dropout_keeps_the_convs_own_keys() -> None:
    head = heads.build_head(512, num_classes=5, dropout=0.5, conv=True)
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and list(head.state_dict()) == ["weight", "bias"]
    assert heads.describe_module(head) == "Conv2d(512 -> 5, 1x1, dropout 0.5)"


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v3_small", "squeezenet1_0"])
def test_a_dropout_head_loads_into_the_plain_torchvision_model(arch: str) -> None:
    """The issue: fc.1.weight (a Sequential) made every export unloadable by torchvision."""
    model = getattr(torchvision.models, arch)(num_classes=1000)
    families.replace_head(model, arch, num_classes=7, dropout=0.2)
    plain = getattr(torchvision.models, arch)(num_classes=7)
    plain.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.eval()(x), plain.eval()(x))


def test_heads_written_as_a_sequential_by_earlier_versions_still_load() -> None:
    model = torchvision.models.resnet18(num_classes=1000)
    families.replace_head(model, "resnet18", num_classes=3, dropout=0.2)
    old = {("fc.1." + k[3:] if k.startswith("fc.") else k): v for k, v in model.state_dict().items()}
    assert "fc.1.weight" in old and "fc.weight" not in old
    renamed = heads.renamed_legacy_heads(old, model)
    assert list(renamed) == list(model.state_dict())  # same order, fc.1.* -> fc.*
    assert heads.renamed_legacy_heads(model.state_dict(), model).keys() == model.state_dict().keys()  # new: as is
    plain = torchvision.models.resnet18(num_classes=3)  # no dropout head in the model: nothing renamed
    assert "fc.1.weight" in heads.renamed_legacy_heads(old, plain)


def test_mlp_head_defaults() -> None:
    head = heads.build_head(256, num_classes=3, type="mlp")
    assert _types(head) == [nn.Linear, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[2].in_features, head[2].out_features) == (256, 512, 512, 3)


@pytest.mark.parametrize(("activation", "cls"), [("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU)])
def test_mlp_head_composition(activation: Any, cls: type[nn.Module]) -> None:
    head = heads.build_head(64, num_classes=2, type="mlp", hidden=[32, 16], dropout=0.1, activation=activation)
    assert _types(head) == [nn.Linear, cls, nn.Dropout, nn.Linear, cls, nn.Dropout, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [(64, 32), (32, 16), (16, 2)]
    assert all(m.p == 0.1 for m in head if isinstance(m, nn.Dropout))


def test_conv_head() -> None:
    head = heads.build_head(512, num_classes=7, type="mlp", hidden=[64], conv=True)
    assert _types(head) == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert head[0].kernel_size == (1, 1) and head[2].out_channels == 7


def test_bad_head_options() -> None:
    with pytest.raises(ModelError, match="unknown activation 'tanh'"):
        heads.build_head(8, num_classes=2, type="mlp", activation="tanh")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="unknown head type 'deep'"):
        heads.build_head(8, num_classes=2, type="deep")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- paths


def test_resolve_path_writes_indices_out() -> None:
    model = torchvision.models.mobilenet_v3_small()
    assert heads.resolve_path(model, "classifier.-1") == "classifier.3"
    assert heads.resolve_path(model, "classifier.-4") == "classifier.0"
    assert heads.resolve_path(model, "features.0.0") == "features.0.0"
    assert heads.get_module(model, "classifier.-1") is model.classifier[3]


@pytest.mark.parametrize(("path", "message"), [
    ("classifer.3", (r"no module 'classifer.3' \(top-level modules are features, avgpool, classifier\); "
                     r"did you mean 'classifier.3'")),
    ("classifier.9", r"no module 'classifier.9' \('classifier' has children 0, 1, 2, 3\)"),
    ("classifier.-5", r"'classifier' has children 0, 1, 2, 3"),
    ("classifier.3.weight", r"'classifier.3' is a Linear with no children"),
    ("", r"no module ''"),
])
def test_bad_path_names_the_nearest(path: str, message: str) -> None:
    with pytest.raises(ModelError, match=message) as exc:
        heads.resolve_path(torchvision.models.mobilenet_v3_small(), path)
    assert exc.value.paths == [("model", "head", "at")]


def test_set_module_through_sequential_indices() -> None:
    model = TwoLinears()
    heads.set_module(model, "body.-2", nn.Linear(12, 6, bias=False))
    assert model.body[1].bias is None
    heads.set_module(model, "out", nn.Identity())
    assert isinstance(model.out, nn.Identity)


@pytest.mark.parametrize(("arch", "kwargs", "path"), [
    ("resnet18", {}, "fc"), ("alexnet", {}, "classifier.6"), ("mobilenet_v2", {}, "classifier.1"),
    ("mobilenet_v3_small", {}, "classifier.3"), ("efficientnet_b0", {}, "classifier.1"),
    ("convnext_tiny", {}, "classifier.2"), ("mnasnet0_5", {}, "classifier.1"), ("maxvit_t", {}, "classifier.5"),
    ("densenet121", {}, "classifier"), ("vit_b_32", {"image_size": 32}, "heads.head"), ("swin_t", {}, "head"),
    ("squeezenet1_1", {}, "classifier.1"), ("regnet_y_400mf", {}, "fc"), ("googlenet", {}, "fc"),
    ("inception_v3", {}, "fc"), ("shufflenet_v2_x0_5", {}, "fc"),
])
def test_default_head_path(arch: str, kwargs: dict[str, Any], path: str) -> None:
    assert families.default_head_path(families.build_architecture(arch, kwargs), arch) == path


def test_default_head_path_of_custom_and_unknown_families() -> None:
    assert families.default_head_path(TwoLinears(), "tests.model.test_heads:TwoLinears") == "out"
    assert families.default_head_path(TwoLinears(), "futurenet_b0") == "out"
    with pytest.raises(ModelError, match="has no nn.Linear to replace; set model.head.at") as exc:
        families.default_head_path(NoLinear(), "tests.model.test_heads:NoLinear")
    assert exc.value.paths == [("model", "head")]


def test_in_features_of() -> None:
    assert heads.in_features_of(nn.Linear(7, 2)) == 7
    assert heads.in_features_of(nn.Conv2d(512, 1000, 1)) == 512
    assert heads.in_features_of(nn.Sequential(nn.Dropout(), nn.Linear(9, 3), nn.Linear(3, 1))) == 9
    with pytest.raises(ModelError, match="cannot tell how many features ReLU takes"):
        heads.in_features_of(nn.ReLU())


# --------------------------------------------------------------------------- replace_head


def test_replace_linear_head() -> None:
    model = torchvision.models.resnet18()
    info = families.replace_head(model, "resnet18", num_classes=5)
    assert info == heads.HeadInfo(path="fc", in_features=512, old="Linear(512 -> 1000)", new="Linear(512 -> 5)",
                                  param_prefix="fc.", num_params=512 * 5 + 5)
    assert [k for k in model.state_dict() if k.startswith(info.param_prefix)] == ["fc.weight", "fc.bias"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_replace_last_of_sequential() -> None:
    model = torchvision.models.vgg11()
    info = families.replace_head(model, "vgg11", num_classes=4, dropout=0.2)
    assert (info.path, info.in_features, info.param_prefix) == ("classifier.6", 4096, "classifier.6.")
    assert info.new == "Linear(4096 -> 4, dropout 0.2)"
    assert _types(model.classifier)[:6] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout]
    assert {k for k in model.state_dict() if k.startswith("classifier.6.")} == {"classifier.6.weight",
                                                                               "classifier.6.bias"}


def test_replace_with_mlp() -> None:
    model = torchvision.models.resnet18()
    info = families.replace_head(model, "resnet18", num_classes=3, type="mlp", hidden=[64], dropout=0.5,
                              activation="gelu")
    assert _types(model.fc) == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert info.new == "Sequential[Linear(512 -> 64), GELU, Dropout(0.5), Linear(64 -> 3)]"
    assert info.num_params == 512 * 64 + 64 + 64 * 3 + 3
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_at_overrides_the_default() -> None:
    model = torchvision.models.mobilenet_v3_small().eval()
    info = families.replace_head(model, "mobilenet_v3_small", num_classes=6, at="classifier")
    assert (info.path, info.in_features, info.param_prefix) == ("classifier", 576, "classifier.")
    assert info.old.startswith("Sequential[Linear(576 -> 1024), Hardswish, Dropout(0.2), Linear(1024 -> 1000)")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 6)

    model = torchvision.models.alexnet()
    assert families.replace_head(model, "alexnet", num_classes=2, at="classifier.-1").path == "classifier.6"
    with pytest.raises(ModelError, match="did you mean 'classifier.6'") as exc:
        families.replace_head(model, "alexnet", num_classes=2, at="clasifier.6")
    assert exc.value.paths == [("model", "head", "at")]


def test_squeezenet_keeps_relu_and_pool() -> None:
    model = torchvision.models.squeezenet1_1().eval()
    info = families.replace_head(model, "squeezenet1_1", num_classes=7, type="mlp", hidden=[32])
    assert (info.path, info.old) == ("classifier.1", "Conv2d(512 -> 1000, 1x1)")
    assert info.new == "Sequential[Conv2d(512 -> 32, 1x1), ReLU, Conv2d(32 -> 7, 1x1)]"
    assert _types(model.classifier) == [nn.Dropout, nn.Sequential, nn.ReLU, nn.AdaptiveAvgPool2d]
    assert model.num_classes == 7
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 7)


def test_bookkeeping_num_classes() -> None:
    model = families.build_architecture("vit_b_32", {"image_size": 32})
    families.replace_head(model, "vit_b_32", num_classes=9)
    assert model.num_classes == 9


def test_googlenet_aux_heads_get_the_new_class_count() -> None:
    model = families.build_architecture("googlenet", {"aux_logits": True})
    info = families.replace_head(model, "googlenet", num_classes=4)
    assert info.notes == tuple(
        f"auxiliary classifier {name}.fc2: Linear(1024 -> 1000)  ->  Linear(1024 -> 4)" for name in ("aux1", "aux2"))
    assert info.aux_prefixes == ("aux1.fc2.", "aux2.fc2.")
    assert model.aux1.fc2.out_features == model.aux2.fc2.out_features == 4
    inception = families.build_architecture("inception_v3", {"aux_logits": True})
    assert families.replace_head(inception, "inception_v3", num_classes=4).aux_prefixes == ("AuxLogits.fc.",)
    assert inception.AuxLogits.fc.out_features == 4
    assert families.replace_head(families.build_architecture("googlenet"), "googlenet", num_classes=4).notes == ()


def test_custom_model_last_linear() -> None:
    model = TwoLinears()
    info = families.replace_head(model, "tests.model.test_heads:TwoLinears", num_classes=2)
    assert (info.path, info.old, info.new) == ("out", "Linear(6 -> 4)", "Linear(6 -> 2)")


def test_dtype_preserved() -> None:
    model = torchvision.models.resnet18().to(torch.float64)
    families.replace_head(model, "resnet18", num_classes=3, type="mlp")
    assert {p.dtype for p in model.fc.parameters()} == {torch.float64}


def test_device_preserved() -> None:
    with torch.device("meta"):
        model = TwoLinears()
    families.replace_head(model, "custom:x", num_classes=2, dropout=0.1)
    assert {p.device.type for p in model.out.parameters()} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_preserved_cuda() -> None:
    model = torchvision.models.resnet18().cuda().half()
    families.replace_head(model, "resnet18", num_classes=3)
    assert (model.fc.weight.device.type, model.fc.weight.dtype) == ("cuda", torch.float16)
