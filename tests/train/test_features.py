"""Feature extraction: layer validation, pooling per output rank, row order, recipes and exports."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recipec
from recipec.pipeline.build import build
from recipec.compiler.data_config import build_data, data_kwargs
from recipec.errors import CheckpointError, DatasetError, ModelError, RecipecError, RecipeError
from recipec.recipe.load import load_recipe
from recipec.pipeline.features import extract_features, features, layer_names
from recipec.weights.inspect import format_inspect, inspect_checkpoint
from tests.tinynets import tiny_cnn

CPU = torch.device("cpu")
TRUST = ["tests.tinynets:tiny_cnn"]  # the factory TINY names: trusted where an export rebuilds it
TINY = """\
    name: tiny-features
    seed: 1
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
    groups:
      - {name: body, match: ['^[0-5]\\.']}
      - {name: head, match: ['^8\\.']}
    freeze: {trainable: [head]}
    data: {dataset: digits, image_size: 8, per_class: 10, batch_size: 16}
    train: {epochs: 1}
    export: {formats: [safetensors]}
"""
# tiny_cnn(width=4): 0 conv -> (N, 4, 8, 8), 3 conv -> (N, 8, 8, 8), 7 flatten -> (N, 8), 8 linear -> (N, 10)
SHAPES = {"0": (4,), "3": (8,), "7": (8,), "8": (10,)}


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY))
    return path


@pytest.fixture(scope="module")
def export(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = build(load_recipe(recipe_file), out=tmp_path_factory.mktemp("run") / "run")
    return run / "model.safetensors"


def _loader(n: int = 10, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 8, 8, generator=g)
    return DataLoader(TensorDataset(images, torch.arange(n) % 3), batch_size=batch_size)


def _plain_data(recipe_file: Path):
    """The recipe's data exactly as features() reads it: no augmentation."""
    return build_data(**data_kwargs(load_recipe(recipe_file)) | {"augment": ()})


class NamedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class TupleAndTokensModel(nn.Module):
    """An LSTM (tuple output over (N, T, C) tokens) and a layer with a (N, 2, 2, 2, 2) output."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5, batch_first=True)
        self.proj = nn.Linear(5, 16)
        self.cube = nn.Unflatten(1, (2, 2, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.flatten(2).transpose(1, 2))  # (N, 64, 3) -> (N, 64, 5)
        return self.cube(self.proj(out[:, -1])).flatten(1)


class SharedBlockModel(nn.Module):
    """One block called twice per forward: it has two rows per example."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))


# --------------------------------------------------------------------------- extract_features


def test_layer_names_are_dotted_module_names_without_the_root():
    assert layer_names(NamedModel()) == ["stem", "blocks", "blocks.0", "blocks.1", "head"]


def test_unknown_layer_is_a_model_error_with_close_matches():
    with pytest.raises(ModelError) as info:
        extract_features(NamedModel(), _loader(), ["head", "blcks.0", "zzz"], device=CPU)
    assert info.value.exit_code == 2 and info.value.paths == [None, None]
    typo, nothing = info.value.problems
    assert "unknown layer 'blcks.0'; did you mean 'blocks.0'" in typo
    assert "did you mean" not in nothing and "stem, blocks, head" in nothing
    with pytest.raises(ModelError, match="no layers given"):
        extract_features(NamedModel(), _loader(), [], device=CPU)


def test_conv_layers_pool_to_channels_and_linear_layers_stay():
    model = tiny_cnn(num_classes=10, width=4).eval()
    feats = extract_features(model, _loader(), list(SHAPES), device=CPU)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {**{k: (10, *s) for k, s in SHAPES.items()}, "labels": (10,)}
    assert all(v.dtype == torch.float32 for k, v in feats.items() if k != "labels")
    assert feats["labels"].dtype == torch.int64 and feats["labels"].tolist() == [i % 3 for i in range(10)]
    images = torch.cat([x for x, _ in _loader()])
    with torch.no_grad():
        conv = model[0](images)  # (10, 4, 8, 8)
        torch.testing.assert_close(feats["0"], conv.mean((2, 3)))
        torch.testing.assert_close(feats["8"], model(images))
        maxed = extract_features(model, _loader(), ["0"], device=CPU, pool="max")
        torch.testing.assert_close(maxed["0"], conv.amax((2, 3)))


def test_tuple_outputs_give_their_first_tensor_tokens_are_pooled_other_ranks_flattened():
    model = TupleAndTokensModel()
    feats = extract_features(model, _loader(n=3), ["lstm", "cube"], device=CPU)
    images = torch.cat([x for x, _ in _loader(n=3)])
    with torch.no_grad():
        out, _ = model.lstm(images.flatten(2).transpose(1, 2))
    torch.testing.assert_close(feats["lstm"], out.mean(1))  # (3, 64, 5) -> (3, 5)
    assert feats["cube"].shape == (3, 16)


def test_a_layer_run_twice_per_forward_is_refused_and_hooks_and_modes_are_restored():
    model = SharedBlockModel().train()
    with pytest.raises(ModelError, match="'block' ran 2 times in one forward pass"):
        extract_features(model, _loader(), ["block"], device=CPU)
    assert not model.block._forward_hooks and model.training and model.block.training

    tiny = tiny_cnn(width=4).train()
    tiny[1].eval()  # a frozen BatchNorm must stay in eval mode afterwards
    before = tiny[1].running_mean.clone()
    extract_features(tiny, _loader(), ["1"], device=CPU)
    assert tiny.training and not tiny[1].training and tiny[4].training
    assert torch.equal(tiny[4].running_mean, torch.zeros(8)) and torch.equal(tiny[1].running_mean, before)
    assert not any(m._forward_hooks for m in tiny.modules())


def test_bad_pool_and_empty_loader():
    with pytest.raises(ModelError, match="pool 'median'"):
        extract_features(NamedModel(), _loader(), ["head"], device=CPU, pool="median")
    with pytest.raises(DatasetError, match="no examples"):
        extract_features(NamedModel(), [], ["head"], device=CPU)


# --------------------------------------------------------------------------- features() from a recipe


def test_features_of_a_recipe_follow_the_dataset_order_and_split_sizes(recipe_file, tmp_path):
    data = _plain_data(recipe_file)
    train_labels = [data.train.dataset[i][1] for i in range(len(data.train.dataset))]
    val_labels = [data.val.dataset[i][1] for i in range(len(data.val.dataset))]
    assert data.info["sizes"] == {"train": len(train_labels), "val": len(val_labels), "test": 0} and len(train_labels) == 100

    got = {}
    for split in ("train", "val", "all"):
        out = features(recipe_file, layers=["3", "8"], out=tmp_path / f"{split}.safetensors", split=split)
        got[split] = load_file(out)
        assert set(got[split]) == {"3", "8", "labels"}
    assert got["train"]["labels"].tolist() == train_labels
    assert got["val"]["labels"].tolist() == val_labels
    assert got["all"]["labels"].tolist() == train_labels + val_labels
    assert got["all"]["3"].shape == (len(train_labels) + len(val_labels), 8)
    # batches straddle the train/val boundary in "all", so equal up to rounding only
    torch.testing.assert_close(got["all"]["8"], torch.cat([got["train"]["8"], got["val"]["8"]]))


def test_features_are_deterministic_whatever_the_batch_size(recipe_file, tmp_path):
    first = load_file(features(recipe_file, layers=["0"], out=tmp_path / "a.safetensors", split="train"))
    second = load_file(features(recipe_file, layers=["0"], out=tmp_path / "b.safetensors", split="train"))
    assert torch.equal(first["0"], second["0"]) and torch.equal(first["labels"], second["labels"])
    other = load_file(features(recipe_file, layers=["0"], out=tmp_path / "c.safetensors", split="train",
                               batch_size=7))
    torch.testing.assert_close(other["0"], first["0"])


def test_output_metadata(recipe_file, tmp_path):
    out = features(recipe_file, layers=["8", "3", "8"], out=tmp_path / "f.safetensors", split="val",
                   overrides=["seed=5"])
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["recipec.features.layers"]) == ["8", "3"]
    assert json.loads(meta["recipec.features.classes"]) == [str(i) for i in range(10)]
    assert meta["recipec.features.split"] == "val" and meta["recipec.features.pool"] == "avg"
    assert meta["recipec.features.source"] == str(recipe_file)
    embedded = recipec.Recipe.model_validate(__import__("yaml").safe_load(meta["recipec.recipe"]))
    assert embedded.seed == 5 and embedded.model.arch == "tests.tinynets:tiny_cnn"
    # `recipec inspect` of it: no empty "recipec export:" heading, nothing said to be "shown above"
    text = format_inspect(inspect_checkpoint(out))
    assert "recipec export" not in text and "shown above" not in text
    assert f"  recipec.recipe: the model's recipe, {len(meta['recipec.recipe'].splitlines())} lines (--json prints it " \
           "whole)" in text.splitlines()
    assert '  recipec.features.layers: ["8", "3"]' in text.splitlines()


def test_recipe_errors_write_nothing(recipe_file, tmp_path):
    out = tmp_path / "f.safetensors"
    with pytest.raises(ModelError, match="unknown layer 'layer4'"):
        features(recipe_file, layers=["layer4"], out=out)
    with pytest.raises(DatasetError, match="split 'test'"):
        features(recipe_file, layers=["8"], out=out, split="test")
    with pytest.raises(DatasetError, match="data.val_fraction: is 0, so there is no val split"):
        features(recipe_file, layers=["8"], out=out, split="val", overrides=["data.val_fraction=0"])
    with pytest.raises(CheckpointError, match="written as safetensors"):
        features(recipe_file, layers=["8"], out=tmp_path / "f.pt")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- features() from an export


def test_features_of_an_export_equal_those_of_the_loaded_model(export, recipe_file, tmp_path):
    got = load_file(features(export, layers=["3", "8"], out=tmp_path / "f.safetensors", trust_factories=TRUST))
    data = _plain_data(recipe_file)
    rows = torch.utils.data.ConcatDataset([data.train.dataset, data.val.dataset])
    want = extract_features(recipec.load(export, trust_factories=TRUST), DataLoader(rows, batch_size=32), ["3", "8"],
                            device=CPU)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # the run directory names the same export
    again = load_file(features(export.parent, layers=["3", "8"], out=tmp_path / "g.safetensors", trust_factories=TRUST))
    assert torch.equal(again["8"], got["8"])
    with safe_open(tmp_path / "f.safetensors", "pt") as f:
        assert f.metadata()["recipec.recipe"] == (export.parent / "recipe.yaml").read_text()


def test_overrides_do_not_apply_to_exports(export, tmp_path):
    with pytest.raises(CheckpointError, match="overrides apply to recipes"):
        features(export, layers=["8"], out=tmp_path / "f.safetensors", overrides=["seed=2"])


@pytest.mark.parametrize(("name", "error", "message"), [
    ("notes.txt", CheckpointError, "not a recipe"),
    ("missing.txt", CheckpointError, "no such file"),
    ("missing.safetensors", CheckpointError, "no such file"),
    ("missing.yaml", RecipeError, "missing.yaml"),
])
def test_unknown_or_missing_targets_are_input_errors(tmp_path, name, error, message):
    (tmp_path / "notes.txt").write_text("not a model\n")
    with pytest.raises(error, match=message) as info:
        features(tmp_path / name, layers=["8"], out=tmp_path / "out" / "f.safetensors")
    assert isinstance(info.value, RecipecError) and info.value.exit_code == 2
    assert not (tmp_path / "out").exists()
