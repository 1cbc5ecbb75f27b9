"""data.sampler: balanced: class-balanced draws, a function of (seed, epoch) whatever the workers; per-class accuracy."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from recipec.pipeline.build import build
from recipec.errors import DatasetError, RecipeError
from recipec.compiler.data_config import build_data, check_sampler
from recipec.data.loaders import set_epoch
from recipec.train.loop import evaluate
from recipec.data.sampler import balanced_sampler, balanced_weights
from tests.tinyrecipes import load_tiny, read_metrics, same_weights, tiny_yaml

TINY = tiny_yaml(optimizer="{name: adamw, lr: 1.0e-2, scheduler: {name: cosine}}",
                 data="{dataset: digits, image_size: 8, per_class: 12, batch_size: 16, sampler: balanced}",
                 train="{epochs: 2, keep_last: 2}")


def _labels(loader: Any) -> list[int]:
    return [int(t) for _, y in loader for t in y]


def test_weights_give_every_class_the_same_share() -> None:
    labels = [0] * 90 + [1] * 10
    weights = balanced_weights(labels)
    assert weights.dtype == torch.float64 and weights[:90].sum() == pytest.approx(1) and weights[90:].sum() == 1
    order = list(balanced_sampler(labels, torch.Generator().manual_seed(0)))
    drawn = Counter(labels[j % 100] for j in order)
    assert sum(drawn.values()) == 100 and 35 <= drawn[1] <= 65  # ~50 of 100 draws, not ~10
    # the k-th repeat of example i comes as i + 100 k: every index distinct, so each repeat is seeded apart
    assert len(set(order)) == 100 and Counter(j % 100 for j in order)[90] == sum(j % 100 == 90 for j in order)
    many = Counter(labels[j % 100] for seed in range(50)
                   for j in balanced_sampler(labels, torch.Generator().manual_seed(seed)))
    assert abs(many[1] / 5000 - 0.5) < 0.03


def test_repeats_of_an_example_get_their_own_augmentation() -> None:
    data = build_data(dataset="digits", image_size=8, classes=["0", "1"], per_class=4, batch_size=64,
                      sampler="balanced", augment=["hflip", {"name": "randaugment", "num_ops": 3}], val_fraction=0)
    set_epoch(data, 0)
    dataset = data.train.dataset  # seeded per index (seed, epoch, j); example j % 8
    first, again, repeat = dataset[3], dataset[3], dataset[3 + 8]
    assert first[1] == repeat[1] and torch.equal(first[0], again[0])  # the same draw: the same augmentation
    assert not torch.equal(first[0], repeat[0])  # the second draw of example 3 in the epoch: its own
    (x, _), = list(data.train)
    assert x.shape[0] == 8


def test_balanced_order_is_a_function_of_seed_and_epoch_and_independent_of_workers() -> None:
    kw: dict[str, Any] = {"dataset": "digits", "image_size": 8, "per_class": 30, "batch_size": 64, "sampler": "balanced"}
    one, other = build_data(**kw), build_data(**kw)
    orders = []
    for epoch in (0, 1, 0):
        set_epoch(one, epoch)
        orders.append(_labels(one.train))
    assert orders[0] == orders[2] != orders[1]  # epoch 0 again after epoch 1: the same draws
    set_epoch(other, 1)
    torch.manual_seed(123)  # the global RNG (augmentations) plays no part in the order
    assert _labels(other.train) == orders[1]
    workers = build_data(**kw, num_workers=2)
    set_epoch(workers, 1)
    assert _labels(workers.train) == orders[1]
    assert one.info["sampler"] == "balanced" and len(orders[0]) == one.info["sizes"]["train"]


def test_unknown_sampler_and_several_processes_are_refused() -> None:
    with pytest.raises(DatasetError, match="unknown sampler 'weighted'"):
        build_data(dataset="digits", image_size=8, sampler="weighted")
    check_sampler("balanced", distributed=False)
    check_sampler("random", distributed=True)
    with pytest.raises(RecipeError) as info:
        check_sampler("balanced", distributed=True)
    assert info.value.paths == [("data", "sampler")]


def test_evaluate_gives_per_class_accuracy() -> None:
    class Fixed(torch.nn.Module):  # predicts class 0 for every input whose first pixel is < 0.5, else class 1
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first = x.flatten(1)[:, 0]
            return torch.stack([0.5 - first, first - 0.5, torch.full_like(first, -9)], 1)

    x = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7]).view(5, 1, 1, 1)
    y = torch.tensor([0, 0, 0, 1, 1])
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    loss, acc, per_class = evaluate(Fixed(), loader, torch.device("cpu"), classes=["a", "b", "c"])
    assert acc == pytest.approx(4 / 5) and per_class == {"a": pytest.approx(2 / 3), "b": 1.0, "c": None}
    assert evaluate(Fixed(), loader, torch.device("cpu")) == (loss, acc)


def test_a_balanced_run_writes_per_class_accuracy_and_its_cache_follows_the_sampler(tmp_path: Path) -> None:
    cached = build(load_tiny(tmp_path, body=TINY), out=tmp_path / "cached")
    full = build(load_tiny(tmp_path, "train.feature_cache=off", body=TINY), out=tmp_path / "full")
    metrics = read_metrics(cached)
    assert [m["feature_cache"] for m in metrics] == [True, False]
    for m in metrics:
        assert list(m["val_per_class_acc"]) == [str(c) for c in range(10)]
        assert m["val_acc"] == pytest.approx(sum(m["val_per_class_acc"].values()) / 10, abs=0.05)  # ~equal val sizes
    # the cached head-only epochs drew the balanced batches the loader draws: the same weights, bit for bit
    assert same_weights(cached, full)
    plan = json.loads((cached / "plan.json").read_text())
    assert plan["data"]["sampler"] == "balanced" and plan["data_sampler"]["name"] == "balanced"
