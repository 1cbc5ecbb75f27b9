"""timm gaps: the three crop modes pixel for pixel against timm's own eval transform, weights timm
publishes outside the hub (``.npz``, ``url``/``file``), and ``source.timm_filter`` (timm's own
``checkpoint_filter_fn``)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from torchvision.transforms import v2

from recipec.compiler.compile import compile_recipe, resolve_preprocessing
from recipec.compiler.data_config import data_kwargs
from recipec.recipe.load import load_recipe
from tests.model.timmhub import stand_in

timm = pytest.importorskip("timm")  # an optional extra
from timm.data import create_transform, resolve_data_config  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SHAPES = [(50, 80), (80, 50), (33, 33), (31, 70), (100, 41)]  # (h, w): wide, tall, square, smaller than the crop


def _images(shapes: list[tuple[int, int]] = SHAPES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def _recipe(tmp_path: Path, body: str, *overrides: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(body))
    return load_recipe(path, overrides)


# --------------------------------------------------------------------------- crop modes


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
@pytest.mark.parametrize(("crop_pct", "interpolation"), [(0.875, "bicubic"), (1.0, "bilinear"), (0.9, "bicubic")])
def test_eval_resize_equals_timm_create_transform(mode, crop_pct, interpolation):
    from recipec.data.crops import border_fill, eval_resize

    theirs = create_transform(input_size=(3, 32, 32), interpolation=interpolation, mean=CLIP_MEAN, std=CLIP_STD,
                              crop_pct=crop_pct, crop_mode=mode, is_training=False)
    ours = v2.Compose([eval_resize(32, math.floor(32 / crop_pct), interpolation, mode, border_fill(CLIP_MEAN)),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)])
    for image in _images():
        expected, got = theirs(image), ours(image)
        assert got.shape == expected.shape == (3, 32, 32)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_border_pads_with_the_mean_colour_and_keeps_the_whole_image():
    from recipec.data.crops import BorderResize

    image = Image.new("RGB", (64, 32), (255, 0, 0))  # wide: padded above and below at crop_pct 1
    out = np.asarray(BorderResize(32, 32, "bilinear", [124, 116, 104])(image))
    assert out.shape == (32, 32, 3)
    assert (out[:8] == [124, 116, 104]).all() and (out[24:] == [124, 116, 104]).all()
    assert (out[8:24] == [255, 0, 0]).all()
    # a float tensor (in-memory datasets) pads with the same colour in [0, 1]; one channel with its luminance
    tensor = BorderResize(32, 32, "bilinear", [124, 116, 104])(torch.ones(3, 32, 64))
    torch.testing.assert_close(tensor[:, 0, 0], torch.tensor([124, 116, 104]) / 255)
    grey = BorderResize(32, 32, "bilinear", [124, 116, 104])(torch.ones(1, 32, 64))
    assert grey[0, 0, 0].item() == pytest.approx((0.299 * 124 + 0.587 * 116 + 0.114 * 104) / 255)


def _border_cfg(monkeypatch, name: str = "resnet10t", tag: str = "c3_in1k") -> Any:
    """The registered pretrained config of name.tag, made a ``crop_mode: border`` one with CLIP's mean."""
    import dataclasses

    from timm.models import _registry

    cfg = dataclasses.replace(_registry._model_pretrained_cfgs[f"{name}.{tag}"], crop_mode="border", mean=CLIP_MEAN,
                              std=CLIP_STD, input_size=(3, 48, 48))
    monkeypatch.setitem(_registry._model_pretrained_cfgs, f"{name}.{tag}", cfg)
    return cfg


def _folder(root: Path) -> list[Path]:
    paths = []
    for split in ("train", "val"):
        for k, image in enumerate(_images(SHAPES, seed=len(split))):
            path = root / split / ("a" if k % 2 else "b") / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            paths.append(path)
    return paths


def test_border_weights_preprocess_data_and_predictor_as_timm(tmp_path, offline, monkeypatch):
    from recipec.compiler.data_config import build_data, build_split
    from recipec.inference.predictor import image_transform
    from recipec.inference.preprocessing import describe_preprocessing, preprocessing_of

    home, attempts = offline
    _border_cfg(monkeypatch)
    stand_in(home, "resnet10t", "c3_in1k")
    _folder(tmp_path / "data")
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: timm/resnet10t, weights: c3_in1k, head: {num_classes: 2}}
        data: {dataset: imagefolder, root: data, image_size: from_weights, batch_size: 16}
        train: {epochs: 1}
        """)
    rule = resolve_preprocessing(recipe)
    assert rule["crop_mode"] == "border" and rule["fill"] == [123, 117, 104]
    assert rule["summary"].startswith("longer side to 54 (bicubic), padded with RGB (123, 117, 104) and centre crop 48x48")
    compiled = compile_recipe(recipe)
    assert "longer side to 54" in compiled.plan.text()

    # timm's eval transform, as timm resolves it for the model built from this config
    model = timm.create_model("resnet10t.c3_in1k")
    theirs = create_transform(**resolve_data_config(model=model), is_training=False)
    assert resolve_data_config(model=model)["crop_mode"] == "border"

    data = build_data(**data_kwargs(recipe))
    assert data.info["resize"]["crop_mode"] == "border" and data.info["resize"]["fill"] == [123, 117, 104]
    split = build_split(split="val", **(data_kwargs(recipe) | {"classes": data.classes}))
    got = torch.cat([x for x, _ in split.loader])
    files = sorted((tmp_path / "data" / "val").rglob("*.png"), key=lambda p: (p.parent.name, p.name))
    expected = torch.stack([theirs(Image.open(p).convert("RGB")) for p in files])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    # the predictor reads the same rule back from an export's provenance
    provenance = {"data": {"resize": data.info["resize"], "in_channels": 3},
                  "normalization": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}
    prep = preprocessing_of(json.loads(json.dumps(provenance)))
    transform = image_transform(prep)
    for p in files:
        torch.testing.assert_close(transform(Image.open(p)), theirs(Image.open(p).convert("RGB")), rtol=0, atol=1e-5)
    words = describe_preprocessing(prep)
    assert "the longer side resized to 54 (bicubic, aspect ratio kept), padded to 48x48 with RGB (123, 117, 104)" in words
    assert not attempts


# --------------------------------------------------------------------------- source.timm_filter


def _facebook_convnext(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's convnext state dict in the layout of the official (facebookresearch/ConvNeXt) checkpoints."""
    import re

    out = {}
    for k, v in state.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.fc.", "head.")
        k = k.replace("head.norm.", "norm.")
        out[k] = v.clone()
    return out


def _convnext_source(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    state = timm.create_model("convnext_atto").state_dict()
    path = tmp_path / "convnext_atto_1k_224.pth"
    torch.save({"model": _facebook_convnext(state)}, path)  # as the official files wrap it
    return path, state


def _filter_recipe(tmp_path: Path, arch: str, *overrides: str):
    return _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: {arch}, head: {{num_classes: 3}}}}
        source: {{checkpoint: convnext_atto_1k_224.pth, timm_filter: true, exclude: ['^head\\.fc\\.']}}
        """, *overrides)


def test_timm_filter_loads_an_official_convnext_checkpoint(tmp_path):
    from recipec.errors import TransferError

    _, state = _convnext_source(tmp_path)
    compiled = compile_recipe(_filter_recipe(tmp_path, "timm/convnext_atto"))
    report = compiled.reports["source"]
    assert report.filter == "timm's timm.models.convnext.checkpoint_filter_fn"
    assert set(report.loaded) == set(state) - {"head.fc.weight", "head.fc.bias"}
    assert not report.missing and not report.unexpected
    own = compiled.model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in report.loaded)
    assert "state dict at 'model', then timm's timm.models.convnext.checkpoint_filter_fn" in compiled.plan.text()
    assert compiled.plan.data["reports"]["source"]["filter"] == report.filter
    # without the filter the official names match nothing: the report says so instead of loading garbage
    with pytest.raises(TransferError, match="source"):
        compile_recipe(_filter_recipe(tmp_path, "timm/convnext_atto", "source.timm_filter=false"))


def test_timm_filter_refuses_what_it_cannot_run(tmp_path):
    from recipec.errors import ModelError

    _convnext_source(tmp_path)
    with pytest.raises(ModelError, match=r"source.timm_filter: .*timm models .*not 'resnet18'"):
        compile_recipe(_filter_recipe(tmp_path, "resnet18"))
    with pytest.raises(ModelError, match=r"source.timm_filter: timm/resnet10t: timm's timm.models.resnet has no "
                                         r"checkpoint_filter_fn"):
        compile_recipe(_filter_recipe(tmp_path, "timm/resnet10t"))


# --------------------------------------------------------------------------- weights outside the hub


def _weights_recipe(tmp_path: Path, name: str, tag: str, kwargs: str = "{}"):
    return _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: timm/{name}, weights: {tag}, kwargs: {kwargs}, head: {{num_classes: 10}}}}
        """)


def _replace_cfg(monkeypatch, full: str, **changes: Any) -> None:
    import dataclasses

    from timm.models import _registry

    monkeypatch.setitem(_registry._model_pretrained_cfgs, full,
                        dataclasses.replace(_registry._model_pretrained_cfgs[full], **changes))


def test_custom_load_tags_load_the_converted_copy_on_the_hub(tmp_path, offline):
    # the augreg ViTs: timm's custom_load reads the original .npz from the url, but the hub holds a converted copy,
    # which timm (and recipec) load first
    home, attempts = offline
    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert cfg.custom_load and cfg.url.endswith(".npz") and cfg.hf_hub_id
    state = stand_in(home, "vit_tiny_patch16_224", "augreg_in21k_ft_in1k")
    compiled = compile_recipe(_weights_recipe(tmp_path, "vit_tiny_patch16_224", "augreg_in21k_ft_in1k", "{img_size: 32}"))
    report = compiled.reports["model.weights"]
    assert report.source == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert set(report.loaded) == set(state) - {"head.weight", "head.bias"}
    assert [a["key"] for a in report.adapted] == ["pos_embed"]
    assert torch.equal(compiled.model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert not attempts


def test_npz_only_weights_are_refused_naming_the_tag_before_any_download(tmp_path, offline, monkeypatch, capsys):
    from recipec.cli import main
    from recipec.errors import ModelError

    _, attempts = offline
    _replace_cfg(monkeypatch, "vit_tiny_patch16_224.augreg_in21k", hf_hub_id=None)  # as if only the .npz existed
    monkeypatch.setenv("RECIPEC_ALLOW_DOWNLOAD", "1")  # even allowed: a file recipec cannot read is not fetched
    recipe = _weights_recipe(tmp_path, "vit_tiny_patch16_224", "augreg_in21k", "{img_size: 32}")
    with pytest.raises(ModelError) as caught:
        compile_recipe(recipe)
    message = str(caught.value)
    assert "model.weights: weights timm/vit_tiny_patch16_224.augreg_in21k are published only as a JAX .npz file " \
           "(https://storage.googleapis.com/vit_models/augreg/Ti_16-i21k-300ep" in message
    assert "augreg_in21k_ft_in1k" in message and "source.checkpoint" in message
    assert not attempts
    # the command line: exit 2, one error line, no traceback
    with pytest.raises(SystemExit) as stop:
        main(["plan", str(tmp_path / "recipe.yaml")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "published only as a JAX .npz file" in err and "Traceback" not in err


def test_url_weights_come_from_torch_hub_cache_only(tmp_path, offline):
    from recipec.errors import WeightsUnavailableError

    _, attempts = offline
    cfg = timm.models.get_pretrained_cfg("legacy_seresnet18.in1k")
    assert cfg.url and not cfg.hf_hub_id  # published at a url only
    with pytest.raises(WeightsUnavailableError, match=r"weights timm/legacy_seresnet18.in1k are not in the local cache: "
                                                      r"expected .*torch-hub/checkpoints/seresnet18-4bb0ce65\.pth"):
        compile_recipe(_weights_recipe(tmp_path, "legacy_seresnet18", "in1k"))
    assert not attempts
    torch.manual_seed(5)
    state = timm.create_model("legacy_seresnet18").state_dict()
    path = tmp_path / "torch-hub" / "checkpoints" / "seresnet18-4bb0ce65.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    compiled = compile_recipe(_weights_recipe(tmp_path, "legacy_seresnet18", "in1k"))
    report = compiled.reports["model.weights"]
    assert report.source == "timm/legacy_seresnet18.in1k" and not report.missing
    assert set(report.loaded) == set(state) - {"last_linear.weight", "last_linear.bias"}
    assert torch.equal(compiled.model.layer0.conv1.weight, state["layer0.conv1.weight"])
    assert compiled.plan.data["weights"]["url"] == cfg.url


def test_a_pretrained_cfg_file_is_read_before_the_hub_and_custom_hf_loaders_are_refused(tmp_path, offline, monkeypatch):
    from recipec.errors import ModelError, WeightsUnavailableError

    torch.manual_seed(9)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet10t").state_dict().items()}
    path = tmp_path / "local.safetensors"
    _replace_cfg(monkeypatch, "resnet10t.c3_in1k", file=str(path))
    with pytest.raises(WeightsUnavailableError, match=r"names the local file .*local\.safetensors, which is not there"):
        compile_recipe(_weights_recipe(tmp_path, "resnet10t", "c3_in1k"))
    safetensors.torch.save_file(state, path)
    compiled = compile_recipe(_weights_recipe(tmp_path, "resnet10t", "c3_in1k"))
    assert torch.equal(compiled.model.conv1[0].weight, state["conv1.0.weight"])
    _replace_cfg(monkeypatch, "resnet10t.c3_in1k", file=None, custom_load="hf", hf_hub_filename="open_clip_model.bin")
    with pytest.raises(ModelError, match=r"model-specific loader \(custom_load 'hf'\)"):
        compile_recipe(_weights_recipe(tmp_path, "resnet10t", "c3_in1k"))


def test_a_border_run_exports_its_rule_to_the_predictor_and_the_card(tmp_path, offline, monkeypatch):
    import recipec

    home, _ = offline
    _border_cfg(monkeypatch)
    stand_in(home, "resnet10t", "c3_in1k")
    _folder(tmp_path / "data")
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: timm/resnet10t, weights: c3_in1k, head: {num_classes: 2}}
        freeze: {trainable: [head]}
        data: {dataset: imagefolder, root: data, image_size: from_weights, batch_size: 8}
        train: {epochs: 1}
        export: {formats: [safetensors]}
        """)
    run = recipec.build(recipe, out=tmp_path / "run", log=lambda line: None)
    predictor = recipec.load_predictor(run / "model.safetensors")
    theirs = create_transform(**resolve_data_config(model=timm.create_model("resnet10t.c3_in1k")), is_training=False)
    for image in _images([(40, 90), (90, 40)], seed=4):
        torch.testing.assert_close(predictor.transform(image), theirs(image), rtol=0, atol=1e-5)
    card = (run / "README.md").read_text()
    assert "longer side resized to 54 (bicubic, aspect ratio kept), padded to 48x48 with RGB (123, 117, 104)" in card
