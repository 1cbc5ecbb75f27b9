"""A smoke run (``recipec build --smoke``) trains with the run's own sampler: ``data.sampler: balanced``
draws class-balanced over the kept examples, as a function of (seed, epoch)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from recipec.pipeline.smoke import smoke_data
from recipec.compiler.data_config import build_data
from recipec.data.loaders import set_epoch
from recipec.data.sampler import BalancedSampler
from recipec.data.splits import EPOCH_STRIDE
from tests.imagedata import make_imagefolder

COUNTS = {"common": 40, "rare": 4}  # sorted: common 0..39, rare 40..43


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imbalanced")
    make_imagefolder(root, list(COUNTS), {"": COUNTS}, size=8)
    return root


def _labels(loader, epoch: int, data) -> list[int]:
    set_epoch(data, epoch)
    return [int(y) for _, ys in loader for y in ys]


@pytest.mark.parametrize("augment", [[], ["hflip"]])  # without and with per-example seeding (EpochSeeded)
def test_a_smoke_run_keeps_the_balanced_sampler_on_its_examples(folder: Path, augment: list[str]) -> None:
    kw = {"dataset": "imagefolder", "root": str(folder), "image_size": 8, "batch_size": 4, "val_fraction": 0,
          "sampler": "balanced", "augment": augment, "seed": 3}
    data = smoke_data(build_data(**kw), batches=4)  # 16 of the 44 examples, spread over the whole split
    assert isinstance(data.train.sampler, BalancedSampler) and len(data.train.dataset) == 16
    assert data.info["smoke"]["sampler"] == "balanced"
    kept = data.train.sampler.labels
    assert kept.count(1) == 1  # one rare example is kept (the last examples are reached too)
    drawn = [_labels(data.train, epoch, data) for epoch in range(8)]
    rare = sum(d.count(1) for d in drawn) / sum(map(len, drawn))
    assert 0.3 < rare < 0.7, rare  # a permutation of the kept examples would give 1/16
    for epoch in (0, 5):  # the order is the sampler's draws from a generator seeded by (seed, epoch)
        g = torch.Generator().manual_seed(3 * EPOCH_STRIDE + epoch)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the loader's iterator draws its base seed first
        expected = [kept[j % 16] for j in BalancedSampler(kept, g)]
        assert drawn[epoch] == expected
    again = smoke_data(build_data(**kw), batches=4)
    assert [_labels(again.train, e, again) for e in range(8)] == drawn
    if augment:  # each repeat of the rare example gets its own augmentation, as in the real run
        set_epoch(data, 0)
        images = torch.cat([x for x, _ in data.train])
        labels = torch.tensor(drawn[0])
        rare_images = images[labels == 1]  # one example, drawn several times: hflip'ed or not, each on its own
        assert len(rare_images) > 1 and any(not torch.equal(rare_images[0], x) for x in rare_images[1:])


def test_a_smoke_run_with_random_sampler_stays_a_permutation(folder: Path) -> None:
    kw = {"dataset": "imagefolder", "root": str(folder), "image_size": 8, "batch_size": 4, "val_fraction": 0.25}
    data = smoke_data(build_data(**kw), batches=2)
    assert not isinstance(data.train.sampler, BalancedSampler) and data.info["smoke"]["sampler"] == "random"
    first = _labels(data.train, 0, data)
    assert sorted(first) == sorted(int(data.train.dataset[i][1]) for i in range(len(data.train.dataset)))
    assert data.info["smoke"]["sizes"] == {"train": 8, "val": 8}


def test_build_smoke_uses_the_balanced_sampler(folder: Path, tmp_path: Path, monkeypatch) -> None:
    import recipec.pipeline.smoke
    from recipec.pipeline.build import build
    from recipec.recipe.load import load_recipe

    seen = []

    def recording(data, batches):
        data = smoke_data(data, batches)
        seen.append(data.train.sampler)
        return data

    monkeypatch.setattr(recipec.pipeline.smoke, "smoke_data", recording)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: smoke-balanced
        device: cpu
        model: {{arch: "tests.tinynets:tiny_cnn", kwargs: {{width: 4}}, head: {{num_classes: 2}}}}
        groups:
          - {{name: body, match: ['^[0-5]\\.']}}
          - {{name: head, match: ['^8\\.']}}
        freeze: {{trainable: [head, body]}}
        data: {{dataset: imagefolder, root: {folder}, image_size: 8, batch_size: 4, sampler: balanced}}
        train: {{epochs: 3}}
        export: {{formats: [safetensors]}}
    """))
    run = build(load_recipe(recipe), out=tmp_path / "run", log=None, smoke=2)
    assert len(seen) == 1 and isinstance(seen[0], BalancedSampler)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["data"]["smoke"]["sampler"] == "balanced" and plan["data"]["sampler"] == "balanced"
    assert plan["data"]["smoke"]["sizes"]["train"] == 8
