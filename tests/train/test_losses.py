"""The `loss:` section: label smoothing, class weights (auto and mapping), focal loss, checked against
computations written out independently here, and wired into plan.json, `recipec plan` and the fit loop."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from recipec.pipeline.build import build
from recipec.pipeline.planning import plan_recipe
from recipec.cli import main
from recipec.errors import RecipeError
from recipec.train.losses import build_criterion, focal_loss, resolve_class_weights
from tests.tinyrecipes import GROUPS2, load_tiny, tiny_yaml, write_recipe

TINY = tiny_yaml(groups=GROUPS2, freeze="{trainable: [head]}", optimizer="{name: adamw, lr: 1.0e-2}",
                 train="{epochs: 1}")


def _recipe(tmp_path: Path, *overrides: str) -> Any:
    return load_tiny(tmp_path, *overrides, body=TINY)


def _by_hand(logits: torch.Tensor, target: torch.Tensor, *, eps: float, weight: list[float], gamma: float) -> float:
    """-sum_c w_c t_c (1 - p_c)^gamma log p_c per example, in plain Python; indices: / sum w[y], soft: / N."""
    n, c = logits.shape
    total, norm = 0.0, 0.0
    for i in range(n):
        row = [float(v) for v in logits[i]]
        top = max(row)
        z = sum(math.exp(v - top) for v in row)
        logp = [v - top - math.log(z) for v in row]
        if target.dim() == 1:
            t = [1.0 if k == int(target[i]) else 0.0 for k in range(c)]
            norm += weight[int(target[i])]
        else:
            t = [float(v) for v in target[i]]
            norm += 1.0
        t = [(1 - eps) * v + eps / c for v in t]
        total += -sum(weight[k] * t[k] * (1 - math.exp(logp[k])) ** gamma * logp[k] for k in range(c))
    return total / norm


@pytest.mark.parametrize("soft", [False, True], ids=["indices", "soft-targets"])
@pytest.mark.parametrize("gamma", [None, 0.0, 2.0])
def test_criterion_matches_the_formula(soft, gamma):
    torch.manual_seed(0)
    logits = torch.randn(7, 4, dtype=torch.float64) * 3
    target = torch.softmax(torch.randn(7, 4), 1).double() if soft else torch.tensor([0, 1, 2, 3, 3, 1, 0])
    weight = [0.5, 2.0, 1.0, 3.0]
    criterion = build_criterion(label_smoothing=0.2, class_weights=weight, focal_gamma=gamma)
    got = criterion(logits.float(), target.float() if soft else target)
    assert float(got) == pytest.approx(_by_hand(logits, target, eps=0.2, weight=weight, gamma=gamma or 0.0), rel=1e-5)


def test_focal_at_gamma_zero_is_torch_cross_entropy():
    torch.manual_seed(1)
    logits, y = torch.randn(9, 5), torch.randint(0, 5, (9,))
    w = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    for target in (y, torch.softmax(torch.randn(9, 5), 1)):
        expected = F.cross_entropy(logits, target, weight=w, label_smoothing=0.1)
        assert torch.allclose(focal_loss(logits, target, gamma=0.0, weight=w, label_smoothing=0.1), expected, atol=1e-6)


def test_focal_down_weights_easy_examples():
    logits = torch.tensor([[6.0, 0.0], [0.2, 0.0]])  # the first is easy (p ~ 0.998), the second hard
    y = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, y, reduction="none")
    easy, hard = (focal_loss(logits[i:i + 1], y[i:i + 1], gamma=2.0) for i in range(2))
    assert easy / ce[0] < 1e-4 and hard / ce[1] > 0.2


def test_auto_class_weights_are_sklearns_balanced():
    classes = ["a", "b", "c"]
    counts = {"a": 60, "b": 30, "c": 10}
    weights = resolve_class_weights("auto", classes, counts)
    n = 100
    assert weights == pytest.approx([n / (3 * 60), n / (3 * 30), n / (3 * 10)])
    # the weight of an average training example is 1: the loss keeps its scale
    assert sum(w * counts[c] for c, w in zip(classes, weights)) / n == pytest.approx(1.0)


def test_class_weights_mapping_and_its_errors():
    assert resolve_class_weights({"b": 4.0}, ["a", "b"], None) == [1.0, 4.0]
    with pytest.raises(RecipeError) as info:
        resolve_class_weights({"cat": 2.0, "dgo": 1.0}, ["cat", "dog"], None)
    assert info.value.paths == [("class_weights", "dgo")] and "unknown class 'dgo'" in str(info.value)
    with pytest.raises(RecipeError, match="'b' has no training examples"):
        resolve_class_weights("auto", ["a", "b"], {"a": 3, "b": 0})


def test_plan_records_the_resolved_weights(tmp_path, capsys):
    recipe = _recipe(tmp_path, "loss={class_weights: auto, label_smoothing: 0.1}", "data.per_class=null")
    _, plan = plan_recipe(recipe)
    counts = plan["data"]["train_per_class"]
    n, c = sum(counts.values()), len(counts)
    assert plan["loss"]["class_weights"] == pytest.approx({k: n / (c * v) for k, v in counts.items()})
    assert plan["loss"]["label_smoothing"] == 0.1 and plan["loss"]["validation"] == "plain cross-entropy"
    with pytest.raises(SystemExit) as code:
        main(["plan", str(tmp_path / "tiny.yaml"), "--set", "loss.label_smoothing=0.1", "--set",
              "loss.focal={gamma: 2}", "--set", "train.ema={decay: 0.99, every: 2}", "--set", "export.weights=ema"])
    assert code.value.code == 0
    out = capsys.readouterr().out
    assert "loss      focal (gamma 2); label smoothing 0.1; val_loss is plain cross-entropy" in out
    assert "ema       decay 0.99, every 2 optimizer steps; validated as val_loss_ema, val_acc_ema" in out
    assert "select    best epoch by val_acc (max) -> checkpoints/best.pt; exports: ema weights" in out


def test_unknown_class_in_the_recipe_is_a_located_error(tmp_path, capsys):
    write_recipe(tmp_path, TINY + "loss: {class_weights: {'3': 2.0, seven: 1.0}}\n")
    with pytest.raises(SystemExit) as code:
        main(["plan", str(tmp_path / "tiny.yaml")])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert "tiny.yaml:" in err and "loss.class_weights.seven: unknown class 'seven'" in err


def test_the_fit_loop_trains_with_the_recipes_criterion(tmp_path, monkeypatch):
    import recipec.train.loop as loop

    seen: dict[str, Any] = {}
    real = loop.fit

    def spy(**kwargs: Any) -> Any:
        seen["criterion"] = kwargs["training"].criterion
        return real(**kwargs)

    monkeypatch.setattr(loop, "fit", spy)
    run = build(_recipe(tmp_path, "loss={label_smoothing: 0.2, class_weights: {'1': 3.0}, focal: {gamma: 1.5}}"),
                out=tmp_path / "run")
    logits, y = torch.randn(6, 10), torch.tensor([1, 1, 2, 3, 4, 5])
    weight = [1.0, 3.0] + [1.0] * 8
    assert float(seen["criterion"](logits, y)) == pytest.approx(
        _by_hand(logits.double(), y, eps=0.2, weight=weight, gamma=1.5), rel=1e-5)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
