"""data.augment by name with options, the transform order, MixUp/CutMix of batches, and exact resume with all of it on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.transforms import v2

from recipec.pipeline.build import build
from recipec.pipeline.planning import plan_recipe
from recipec.errors import DatasetError, RecipeError
from recipec.recipe.spec_augment import AUGMENT_NAMES
from recipec.data.augment import AUGMENTS, BatchMix, batch_mix, build_augmentations
from recipec.train.cache import cache_refusal
from recipec.compiler.data_config import build_data
from recipec.train.state import load_state
from tests.tinyrecipes import killed_build, load_tiny, tiny_yaml

TINY = tiny_yaml(optimizer="{name: adamw, lr: 1.0e-2, scheduler: {name: cosine}}",
                 data="{dataset: digits, image_size: 8, per_class: 12, batch_size: 16, normalize: imagenet}")

# Everything random this module adds, on at once (the done-when); append `train.ema={decay: 0.9}`
# and the like as they land: the SIGKILL test below counts validations per epoch from the metrics.
ALL_ON = ("data.augment=[hflip, {name: randaugment, num_ops: 2, magnitude: 5}, trivialaugment, random_erasing]",
          "data.mixup={alpha: 0.2, prob: 1.0}", "data.cutmix={alpha: 1.0, prob: 0.5}", "data.sampler=balanced")


def _recipe(tmp_path: Path, *overrides: str) -> Any:
    return load_tiny(tmp_path, *overrides, body=TINY)


def _problems(tmp_path: Path, *overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        _recipe(tmp_path, *overrides)
    return [re.sub(r"^--set .*?: (?=data\.)", "", p) for p in info.value.problems]  # without the --set prefix


# --------------------------------------------------------------------------- the recipe


def test_spec_and_runtime_know_the_same_names() -> None:
    assert AUGMENT_NAMES == AUGMENTS


def test_items_are_names_or_mappings_with_validated_options(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "data.augment=[hflip, {name: randaugment, num_ops: 3}, {name: autoaugment, policy: svhn}]")
    assert recipe.data.augment[0] == "hflip"
    assert recipe.data.augment[1].num_ops == 3 and recipe.data.augment[1].magnitude == 9
    assert recipe.data.augment[2].policy == "svhn"
    problems = _problems(tmp_path, "data.augment=[hflp, {name: randaugment, num_op: 2}, {name: augmx}, {p: 1},"
                                   " {name: randaugment, magnitude: 31}, {name: random_erasing, value: x},"
                                   " {name: random_resized_crop, scale: [0.9, 0.5]}, {name: rotate, degrees: 500}]")
    assert problems == [
        "data.augment.0: must be one of " + ", ".join(AUGMENTS) + ", got 'hflp'; did you mean 'hflip'?",
        "data.augment.1.num_op: unknown key 'num_op'; did you mean 'num_ops'? "
        "(randaugment takes name, num_ops, magnitude, num_magnitude_bins)",
        "data.augment.2.name: must be one of " + ", ".join(AUGMENTS) + ", got 'augmx'; did you mean 'augmix'?",
        "data.augment.3: needs name: one of " + ", ".join(AUGMENTS),
        "data.augment.4.magnitude: must be below num_magnitude_bins (31), got 31",
        "data.augment.5.value: must be a number or random, got 'x'",
        "data.augment.6.scale: min must not exceed max, got [0.9, 0.5]",
        "data.augment.7.degrees: must be <= 180, got 500",
    ]


def test_mix_and_sampler_keys_are_bounded(tmp_path: Path) -> None:
    assert sorted(_problems(tmp_path, "data.mixup={alpha: 0}", "data.cutmix={prob: 2}", "data.sampler=weighted")) == [
        "data.cutmix.prob: must be <= 1, got 2", "data.mixup.alpha: must be > 0, got 0",
        "data.sampler: must be one of random, balanced, got 'weighted'"]


# --------------------------------------------------------------------------- the transforms


def test_random_erasing_comes_after_normalisation_and_the_plan_lists_the_order() -> None:
    erase = {"name": "random_erasing", "p": 1.0, "scale": [0.2, 0.3], "value": 0}
    kw: dict[str, Any] = {"dataset": "digits", "image_size": 16, "per_class": 5, "normalize": "imagenet"}
    data = build_data(augment=[erase, "hflip"], **kw)
    assert data.info["transforms"] == {
        "train": ["Resize(16x16, bilinear)", "RandomHorizontalFlip(p=0.5)",
                  "Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])",
                  "RandomErasing(p=1, scale=[0.2, 0.3], ratio=[0.3, 3.3], value=0)"],
        "eval": ["Resize(16x16, bilinear)", "Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])"]}
    torch.manual_seed(0)
    erased = torch.stack([data.train.dataset[i][0] for i in range(10)])  # (10, 3, 16, 16)
    # value 0 after Normalize is the mean: every channel exactly 0 over the box (before it, 0 would be black)
    assert ((erased == 0).all(1).flatten(1).sum(1) >= 0.15 * 256).all()  # a box of about 20% of the area
    plain = torch.stack([build_data(**kw).train.dataset[i][0] for i in range(10)])
    assert not (plain == 0).all(1).any()


@pytest.mark.parametrize("channels", [1, 3])
def test_policies_run_on_float_images_of_one_and_three_channels(channels: int) -> None:
    items = ["randaugment", "trivialaugment", "augmix", {"name": "autoaugment", "policy": "cifar10"},
             {"name": "color_jitter", "saturation": 0.3, "hue": 0.1}, {"name": "random_erasing", "value": "random"}]
    augs = build_augmentations(items, 16, channels)
    assert [type(t).__name__ for t in augs.before] == ["RandAugment", "TrivialAugmentWide", "AugMix", "AutoAugment",
                                                       "ColorJitter"]
    assert [type(t).__name__ for t in augs.after] == ["RandomErasing"] and augs.skipped == []
    torch.manual_seed(0)
    x = torch.rand(channels, 16, 16)
    out = v2.Compose(augs.before)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_colour_policies_on_other_channel_counts_are_refused_and_color_jitter_skipped() -> None:
    with pytest.raises(DatasetError) as info:
        build_data(dataset="fake", num_classes=2, image_size=8, in_channels=2,
                   augment=["hflip", "randaugment", "color_jitter", {"name": "augmix"}])
    assert info.value.paths == [("data", "augment", 1), ("data", "augment", 3)]
    assert "randaugment works on images of 1 or 3 channels, and model.in_channels is 2" in info.value.problems[0]
    data = build_data(dataset="fake", num_classes=2, image_size=8, in_channels=2, augment=["hflip", "color_jitter",
                                                                                            "random_erasing"])
    assert data.info["augment"] == ["hflip", "random_erasing"] and data.info["augment_skipped"] == ["color_jitter"]


def test_plan_text_shows_train_and_eval_transforms_mix_and_sampler(tmp_path: Path) -> None:
    compiled, planned = plan_recipe(_recipe(tmp_path, *ALL_ON))
    text = compiled.plan.text()
    assert ("train     Resize(8x8, bilinear) -> RandomHorizontalFlip(p=0.5) -> RandAugment(num_ops=2, magnitude=5, "
            "num_magnitude_bins=31) -> TrivialAugmentWide(num_magnitude_bins=31) -> Normalize(") in text
    assert "-> RandomErasing(p=0.5, scale=[0.02, 0.33], ratio=[0.3, 3.3], value=0)\n" in text
    assert "eval      Resize(8x8, bilinear) -> Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])" in text
    assert "mix       MixUp(alpha=0.2, prob=1) or CutMix(alpha=1, prob=0.5) (one of them per batch" in text
    assert "sampler   balanced:" in text
    assert planned["data_sampler"]["name"] == "balanced" and planned["data_mix"]["cutmix"] == {"alpha": 1.0, "prob": 0.5}
    assert planned["data"]["transforms"] == planned["data_transforms"]


# --------------------------------------------------------------------------- MixUp / CutMix


def test_batch_mix_gives_soft_targets_from_the_global_rng() -> None:
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    mix = BatchMix(4, mixup={"alpha": 0.4, "prob": 1.0})
    torch.manual_seed(1)
    mixed, soft = mix(x, y)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    lam = soft[0, y[0]].item()  # each example mixed with the one before it (roll 1): lam x_i + (1 - lam) x_{i-1}
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[7], atol=1e-6)
    torch.manual_seed(1)
    again, soft_again = mix(x, y)
    assert torch.equal(again, mixed) and torch.equal(soft_again, soft)
    never = BatchMix(4, cutmix={"alpha": 1.0, "prob": 0.0})
    same_x, same_y = never(x, y)
    assert same_x is x and same_y is y  # an unmixed batch keeps its class indices
    assert batch_mix(4) is None


def test_label_smoothing_smooths_the_mixed_targets_as_timm_does() -> None:
    from recipec.train.losses import build_criterion

    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(0)
    _, soft = BatchMix(4, mixup={"alpha": 1.0, "prob": 1.0})(x, y)
    logits = torch.randn(6, 4)
    eps = 0.1
    # timm's mixup_target: smooth each one-hot, then mix; the same as smoothing the mixed target
    lam = soft[0, 0].item()
    one_hot = torch.nn.functional.one_hot(y, 4).float() * (1 - eps) + eps / 4
    timm = lam * one_hot + (1 - lam) * one_hot.roll(1, 0)
    expected = -(timm * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(build_criterion(label_smoothing=eps)(logits, soft), expected, atol=1e-6)


def test_both_pick_one_per_batch() -> None:
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    mix = batch_mix(3, {"alpha": 1.0, "prob": 1.0}, {"alpha": 1.0, "prob": 1.0})
    assert mix is not None
    torch.manual_seed(0)
    kinds = set()
    for _ in range(40):
        mixed, _ = mix(x, y)
        # CutMix pastes a box: every pixel is one of the two images; MixUp blends (almost) every pixel
        boxed = ((mixed == x) | (mixed == x.roll(1, 0))).all()
        kinds.add("cutmix" if boxed else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_mixing_keeps_the_feature_cache_off_and_says_why(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    group = type("G", (), {"name": "head", "params": ["1.weight", "1.bias"]})()
    assert cache_refusal(model, head_path="1", groups=[group], augment=[], batchnorm="frozen",
                         distributed=False, mix=True) == "mixup/cutmix mix the examples of every batch"
    run = build(_recipe(tmp_path, "data.mixup={alpha: 0.2}", "train.epochs=1", "freeze.unfreeze={}"), out=tmp_path / "run")
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["feature_cache"] is False
    assert metrics["feature_cache_refused"] == "mixup/cutmix mix the examples of every batch"
    assert 0 <= metrics["val_acc"] <= 1  # validation is on hard labels, never mixed


# --------------------------------------------------------------------------- exact resume


@pytest.mark.slow  # three builds and a subprocess: ~15 s of CPU
def test_sigkill_then_resume_is_exact_with_mixup_cutmix_randaugment_and_the_balanced_sampler(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, *ALL_ON)
    whole = build(recipe, out=tmp_path / "whole")
    first = json.loads((whole / "metrics.jsonl").read_text().splitlines()[0])
    per_epoch = 1 + sum(key.endswith("_ema") and key.startswith("val_acc") for key in first)  # validations
    args = [f"--set={o}" for o in ALL_ON]
    killed = killed_build("build", str(tmp_path / "tiny.yaml"), *args, "--out", str(tmp_path / "cut"), "--quiet",
                          at=per_epoch + 1)  # in epoch 1's validation
    assert killed.returncode == -9, killed.stderr
    assert load_state(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = build(recipe, out=tmp_path / "cut", resume=True)
    a, b = (load_state(run / "checkpoints" / "last.pt") for run in (whole, resumed))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a.get("extra", {}).get("ema", {}).get("state", {}):
        assert torch.equal(a["extra"]["ema"]["state"][k], b["extra"]["ema"]["state"][k]), k
    assert [m["train_loss"] for m in a["history"]] == [m["train_loss"] for m in b["history"]]
