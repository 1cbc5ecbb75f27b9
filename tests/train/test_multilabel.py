"""task: multilabel: multi-hot targets from a manifest, BCE, mAP/F1 that match scikit-learn, a run that
learns on co-occurring colour patches, eval/predict/plan/card aware of it, the refusals, and exact resume."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, f1_score

from recipec.pipeline.build import build
from recipec.cli import main
from recipec.errors import DatasetError, ModelError, RecipeError
from recipec.recipe.load import load_recipe
from recipec.compiler.data_config import build_data
from recipec.train.multilabel import (
    average_precision,
    baseline_map,
    bce_criterion,
    multilabel_metrics,
    tuned_thresholds,
)
from recipec.train.state import load_state
from tests.imagedata import make_manifest

ROOT = Path(__file__).resolve().parents[2]
TRUST = ["--trust-factory", "tests.tinynets:tiny_cnn"]
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230), "yellow": (230, 220, 40)}

RECIPE = """\
    name: patches
    seed: 1
    device: cpu
    task: multilabel
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 8}, weights: null, head: {num_classes: 4}}
    optimizer: {name: adamw, lr: 2.0e-2, weight_decay: 0.0, scheduler: {name: cosine}}
    data: {dataset: manifest, root: data/manifest.csv, image_size: 16, batch_size: 16, normalize: none, num_workers: 0}
    train: {epochs: 5, keep_last: 5}
    export: {formats: [safetensors]}
"""


def patches(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """16x16 grey images, each with a random subset of four 5x5 colour patches at random places (p = 0.4
    each, so some images have none); ``label`` lists the patches' colours, ``;``-separated."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,split"]
    for split, count in per_split.items():
        for _ in range(count):
            names = [c for c in COLOURS if rng.random() < 0.4]
            image = Image.new("RGB", (16, 16), (120, 120, 120))
            pixels = image.load()
            assert pixels is not None
            for name in names:
                x0, y0 = rng.randrange(12), rng.randrange(12)
                for y in range(y0, y0 + 5):
                    for x in range(x0, x0 + 5):
                        if x < 16 and y < 16:
                            pixels[x, y] = tuple(min(255, max(0, v + rng.randint(-15, 15))) for v in COLOURS[name])
            path = root / "images" / f"{len(lines):04d}.png"
            image.save(path)
            lines.append(f"{path.relative_to(root).as_posix()},{';'.join(names)},{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def _recipe(tmp_path: Path, *overrides: str, body: str = RECIPE) -> Any:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(body))
    return load_recipe(path, overrides)


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The done-when run: 160 training and 64 validation images of co-occurring patches, 5 epochs."""
    tmp_path = tmp_path_factory.mktemp("patches")
    patches(tmp_path / "data", {"train": 160, "val": 64, "test": 32})
    return build(_recipe(tmp_path), out=tmp_path / "run")


# --------------------------------------------------------------------------- metrics against scikit-learn


def test_ap_f1_and_exact_match_equal_scikit_learns() -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(60, 5, generator=g) < 0.35).float()
    target[:, 4] = 0  # a class without positives: no AP, left out of the mAP; F1 0 (zero_division=0)
    logits = torch.randn(60, 5, generator=g) + 2 * target
    logits[:20, 1] = 0.25  # ties: one threshold, as scikit-learn takes them
    result = multilabel_metrics(logits, target, list("abcde"), threshold=0.5)
    y, s = target.numpy(), torch.sigmoid(logits).numpy()
    expected_aps = [average_precision_score(y[:, c], s[:, c]) for c in range(4)]
    for c in range(4):
        assert average_precision(logits[:, c], target[:, c]) == pytest.approx(expected_aps[c], abs=1e-12)
    assert result["per_class"]["e"]["ap"] is None
    assert result["map"] == pytest.approx(sum(expected_aps) / 4, abs=1e-12)
    predicted = (s >= 0.5).astype(int)
    assert result["f1_micro"] == pytest.approx(f1_score(y, predicted, average="micro", zero_division=0), abs=1e-12)
    assert result["f1_macro"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0), abs=1e-12)
    assert result["acc"] == pytest.approx(float((predicted == y).all(1).mean()))
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits.double()), target.double())
    assert result["loss"] == pytest.approx(float(bce), rel=1e-9)
    # a constant predictor's mAP is the mean positive rate: the baseline a model must beat
    constant = multilabel_metrics(torch.zeros(60, 5), target, list("abcde"))
    assert constant["map"] == pytest.approx(baseline_map(target)) == pytest.approx(float(y[:, :4].mean(0).mean()))


def test_tuned_thresholds_maximise_each_classs_f1() -> None:
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(40, 3, generator=g) < 0.4).float()
    target[:, 2] = 0
    logits = torch.randn(40, 3, generator=g) + 1.5 * target
    tuned = tuned_thresholds(logits, target, ["a", "b", "c"], default=0.5)
    scores = torch.sigmoid(logits.double()).numpy()
    for c, name in enumerate("ab"):  # brute force over every distinct score, with scikit-learn's F1
        f1s = {float(t): f1_score(target[:, c].numpy(), scores[:, c] >= t) for t in scores[:, c]}
        best = max(f1s.values())
        assert f1s[tuned[name]] == pytest.approx(best) and tuned[name] == max(t for t, f in f1s.items() if f == best)
    assert tuned["c"] == 0.5  # no positive: the recipe's threshold
    per_class = multilabel_metrics(logits, target, list("abc"), threshold=[tuned["a"], tuned["b"], 0.5])
    assert per_class["per_class"]["a"]["f1"] == pytest.approx(max(f1_score(target[:, 0].numpy(), scores[:, 0] >= t)
                                                                  for t in scores[:, 0]))


def test_label_smoothing_moves_the_bce_targets_towards_one_half() -> None:
    logits, target = torch.randn(6, 3), (torch.rand(6, 3) < 0.5).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target * 0.9 + 0.05)
    assert torch.allclose(bce_criterion(0.1)(logits, target), expected)
    with pytest.raises(ModelError, match="num_classes: 3"):
        bce_criterion()(torch.randn(6, 10), target)


# --------------------------------------------------------------------------- data


def test_manifest_labels_become_multi_hot_targets(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "m", ["cat", "dog", "owl"], {"train": 24, "val": 8}, multilabel=True)
    rows = list(csv.DictReader(manifest.open()))
    data = build_data(dataset="manifest", root=str(manifest), task="multilabel", image_size=16, batch_size=64)
    assert data.task == "multilabel" and data.classes == sorted({x for r in rows if r["split"] == "train"
                                                                 for x in r["label"].split(";") if x})
    x, y = next(iter(data.val))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.float32 and y.shape == (8, 3)
    val_rows = [r for r in rows if r["split"] == "val"]
    expected = torch.tensor([[float(c in r["label"].split(";")) for c in data.classes] for r in val_rows])
    assert torch.equal(y, expected)  # an empty label is a row of zeros
    assert any(not r["label"] for r in rows)
    assert data.info["train_per_class"] == {c: sum(c in r["label"].split(";") for r in rows if r["split"] == "train")
                                            for c in data.classes}
    # data.classes: a subset, the other labels ignored
    subset = build_data(dataset="manifest", root=str(manifest), task="multilabel", classes=["owl", "cat"],
                        image_size=16, batch_size=64)
    assert subset.classes == ["owl", "cat"] and torch.equal(next(iter(subset.val))[1], expected[:, [2, 0]])
    # a random val share of the training rows when the manifest has no val rows
    plain = make_manifest(tmp_path / "p", ["a", "b"], {None: 20}, multilabel=True)
    random_val = build_data(dataset="manifest", root=str(plain), task="multilabel", val_fraction=0.25, image_size=8)
    assert random_val.info["sizes"] == {"train": 15, "val": 5, "test": 0}


def test_a_val_label_outside_the_training_labels_is_named(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "m", ["a", "b"], {"train": 6}, multilabel=True)
    (tmp_path / "m" / "images" / "x.png").write_bytes((tmp_path / "m" / "images" / "0000.png").read_bytes())
    manifest.write_text(manifest.read_text() + "images/x.png,a;zebra,val\n")
    with pytest.raises(DatasetError, match=r"manifest.csv line 8: label 'zebra' \(split val\) is on no training row"):
        build_data(dataset="manifest", root=str(manifest), task="multilabel", image_size=8)


def test_recipe_refusals_are_located(tmp_path: Path) -> None:
    body = RECIPE.replace("data/manifest.csv", "m.csv")
    with pytest.raises(RecipeError, match=r"data.dataset: task: multilabel reads its labels from a manifest"):
        _recipe(tmp_path, "data.dataset=digits", body=body)
    for key, value in [("data.mixup", "{alpha: 0.2}"), ("data.cutmix", "{alpha: 1.0}"), ("data.sampler", "balanced"),
                       ("loss.class_weights", "auto"), ("loss.focal", "{gamma: 2}")]:
        with pytest.raises(RecipeError, match=rf"{key}: is not supported with task: multilabel"):
            _recipe(tmp_path, f"{key}={value}", body=body)
    with pytest.raises(RecipeError, match=r"train.select.metric: val_map is measured for task: multilabel only"):
        _recipe(tmp_path, "task=multiclass", "train.select.metric=val_map", body=body)
    with pytest.raises(RecipeError, match=r"train.early_stopping.metric: val_f1_macro is measured for task: multi"):
        _recipe(tmp_path, "task=multiclass", "train.early_stopping={metric: val_f1_macro}", body=body)
    recipe = _recipe(tmp_path, "train.early_stopping={metric: val_map, patience: 2}", body=body)
    assert recipe.train.select.metric == "val_map" and recipe.train.select.direction == "max"
    assert _recipe(tmp_path, "train.select.metric=val_loss", body=body).train.select.metric == "val_loss"
    assert _recipe(tmp_path, "task=multiclass", body=body).train.select.metric == "val_acc"


def test_early_stopping_maximises_map_and_minimises_loss() -> None:
    from recipec.train.loop import EarlyStopping, _update_early_stopping

    rule = EarlyStopping(metric="val_map", patience=2)
    assert _update_early_stopping(0.5, 0, {"val_map": 0.6}, rule) == (0.6, 0)
    assert _update_early_stopping(0.5, 0, {"val_map": 0.4}, rule) == (0.5, 1)
    assert _update_early_stopping(0.5, 0, {"val_loss": 0.4}, EarlyStopping(metric="val_loss")) == (0.4, 0)


# --------------------------------------------------------------------------- the done-when run


def test_a_multilabel_run_learns_and_its_metrics_are_sklearns(learned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = _metrics(learned)
    for m in metrics:
        assert {"val_loss", "val_acc", "val_map", "val_f1_micro", "val_f1_macro", "val_per_class_ap"} <= set(m)
    # the constant predictor's mAP on this val split: the mean positive rate, ~0.4
    val_rows = [r for r in csv.DictReader((learned.parent / "data" / "manifest.csv").open()) if r["split"] == "val"]
    target = torch.tensor([[float(c in r["label"].split(";")) for c in sorted(COLOURS)] for r in val_rows])
    baseline = baseline_map(target)
    best = max(metrics, key=lambda m: m["val_map"])
    assert best["val_map"] > baseline + 0.3 and best["val_map"] > 0.85, (best["val_map"], baseline)
    # the export is the best epoch by val_map; its val mAP, F1 and BCE recomputed independently
    plan = json.loads((learned / "plan.json").read_text())
    assert plan["select"] == {"metric": "val_map", "mode": "max"} and plan["loss"]["name"] == "bce"
    assert plan["task"]["name"] == "multilabel"
    code, out, _ = _cli(capsys, "eval", str(learned), "--split", "val", "--json", *TRUST)
    assert code == 0
    results = json.loads(out)
    from recipec.inference.predictor import load_predictor

    predictor = load_predictor(learned / "model.safetensors", trust_factories=["tests.tinynets:tiny_cnn"])
    images = torch.stack([predictor.transform(Image.open(learned.parent / "data" / r["path"])) for r in val_rows])
    scores = torch.sigmoid(predictor.logits(images).double()).numpy()
    y = target.numpy()
    expected_map = sum(average_precision_score(y[:, c], scores[:, c]) for c in range(4)) / 4
    predicted = (scores >= 0.5).astype(int)
    assert results["map"] == pytest.approx(expected_map, abs=1e-9)
    assert best["val_map"] == pytest.approx(expected_map, abs=1e-6)  # metrics.jsonl of the selected epoch
    assert results["f1_micro"] == pytest.approx(f1_score(y, predicted, average="micro", zero_division=0))
    assert best["val_f1_macro"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0))
    assert best["val_acc"] == pytest.approx(float((predicted == y).all(1).mean()))  # exact match
    assert results["per_class"]["red"]["support"] == int(y[:, sorted(COLOURS).index("red")].sum())
    assert results["classes"] == sorted(COLOURS) and results["threshold"] == 0.5 and results["n"] == 64
    # the default split is test (32 rows); the text report names mAP and exact match
    code, out, _ = _cli(capsys, "eval", str(learned), *TRUST)
    assert code == 0 and out.startswith("test: 32 images") and "mAP" in out and "exact match" in out
    assert json.loads((learned / "eval" / "test.json").read_text())["task"] == "multilabel"
    card = (learned / "README.md").read_text()
    assert "multi-label image classifier" in card and f"Validation mAP **{metrics[-1]['val_map']:.4g}**" in card


def test_predict_lists_the_labels_above_the_threshold(learned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [r for r in csv.DictReader((learned.parent / "data" / "manifest.csv").open()) if r["split"] == "test"]
    paths = [str(learned.parent / "data" / r["path"]) for r in rows[:6]]
    code, out, _ = _cli(capsys, "predict", str(learned / "model.safetensors"), *paths, "--format", "jsonl",
                        "--top-k", "4", *TRUST)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    for line in lines:
        assert len(line["top"]) == 4 and 0 < line["top"][0]["score"] < 1
        assert line["labels"] == [t["class"] for t in line["top"] if t["score"] >= 0.5]
    assert sum(s["score"] for s in lines[0]["top"]) != pytest.approx(1.0)  # sigmoids, not a softmax
    hits = sum(set(line["labels"]) == set(filter(None, r["label"].split(";"))) for line, r in zip(lines, rows))
    assert hits >= 3  # exact label sets for most images
    code, out, _ = _cli(capsys, "predict", str(learned / "model.safetensors"), *paths, "--format", "csv", *TRUST)
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["path", "labels", "scores"]
    assert [r[1] for r in table[1:]] == [";".join(line["labels"]) for line in lines]
    assert all(float(s) >= 0.5 for r in table[1:] for s in filter(None, r[2].split(";")))


def test_eval_on_other_data_takes_a_manifest_with_the_models_labels(learned: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = learned.parent / "data"
    other = data / "other.csv"
    other.write_text("path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in
                                              csv.DictReader((data / "manifest.csv").open()) if r["split"] == "test"))
    code, out, _ = _cli(capsys, "eval", str(learned / "model.safetensors"), "--data", str(other), "--json", *TRUST)
    assert code == 0 and json.loads(out)["n"] == 32
    other.write_text(other.read_text() + "images/0001.png,red;zebra\n")
    code, _, err = _cli(capsys, "eval", str(learned / "model.safetensors"), "--data", str(other), *TRUST)
    assert code == 2 and "other.csv line 34: label 'zebra' is not one of the model's classes" in err
    code, _, err = _cli(capsys, "eval", str(learned / "model.safetensors"), "--data", str(data), *TRUST)
    assert code == 2 and "a multi-label model is evaluated on a manifest file" in err


def test_plan_says_the_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patches(tmp_path / "data", {"train": 24, "val": 4})
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    code, out, _ = _cli(capsys, "plan", str(tmp_path / "recipe.yaml"))
    assert code == 0
    assert "task      multilabel: a sigmoid per class, labels at score >= 0.5" in out
    assert "loss      binary cross-entropy, a sigmoid per class" in out
    assert "select    best epoch by val_map (max)" in out


def test_the_feature_cache_and_ema_work_on_multi_hot_targets(tmp_path: Path) -> None:
    patches(tmp_path / "data", {"train": 40, "val": 16})
    body = RECIPE.replace("train: {epochs: 5, keep_last: 5}", textwrap.indent(textwrap.dedent("""\
        train: {epochs: 2}
        groups:
          - {name: body, match: ['^[0-5]\\.']}
          - {name: head, match: ['^8\\.']}
        freeze: {trainable: [head]}
        """), "    ").lstrip())
    ema = ("train.ema={decay: 0.5}", "train.select.metric=val_map_ema")  # EMA: every metric again with _ema
    cached = build(_recipe(tmp_path, *ema, "multilabel.tune_thresholds=true", body=body), out=tmp_path / "cached")
    plain = build(_recipe(tmp_path, "train.feature_cache=off", *ema, body=body), out=tmp_path / "plain")
    assert [m["feature_cache"] for m in _metrics(cached)] == [True, True]
    for m in _metrics(cached):
        assert {f"{k}_ema" for k in ("val_loss", "val_acc", "val_map", "val_f1_micro", "val_f1_macro")} <= set(m)
        assert 0 < m["val_map_ema"] <= 1 and m["val_map_ema"] != m["val_map"]
    assert [m["val_map"] for m in _metrics(cached)] == pytest.approx([m["val_map"] for m in _metrics(plain)], abs=1e-5)
    a, b = load_file(cached / "model.safetensors"), load_file(plain / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # multilabel.tune_thresholds: per class the val score maximising its F1, in the export, used by labels()
    from recipec.inference.predictor import load_predictor

    tuned = load_predictor(cached / "model.safetensors", trust_factories=["tests.tinynets:tiny_cnn"])
    assert load_predictor(plain / "model.safetensors", trust_factories=["tests.tinynets:tiny_cnn"]).thresholds is None
    rows = [r for r in csv.DictReader((tmp_path / "data" / "manifest.csv").open()) if r["split"] == "val"]
    images = torch.stack([tuned.transform(Image.open(tmp_path / "data" / r["path"])) for r in rows])
    target = torch.tensor([[float(c in r["label"].split(";")) for c in tuned.classes] for r in rows])
    expected = tuned_thresholds(tuned.logits(images), target, tuned.classes, 0.5)
    assert tuned.thresholds == [expected[c] for c in tuned.classes]
    assert tuned.provenance["multilabel"]["thresholds"] == expected
    scores = tuned.scores(images)
    assert [[x["class"] for x in image] for image in tuned.labels(scores)] == [
        [tuned.classes[i] for i in row.argsort(descending=True, stable=True).tolist() if row[i] >= expected[tuned.classes[i]]]
        for row in scores]


# --------------------------------------------------------------------------- exact resume

_KILLER = """
import os, signal, sys
import recipec.train.multilabel as multilabel
real, calls = multilabel.validation_metrics, {"n": 0}
def validation_metrics(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
multilabel.validation_metrics = validation_metrics
from recipec.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow  # two builds and a subprocess
def test_sigkill_then_resume_gives_the_same_multilabel_model(tmp_path: Path) -> None:
    patches(tmp_path / "data", {"train": 48, "val": 16})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(textwrap.dedent(RECIPE).replace("epochs: 5, keep_last: 5", "epochs: 3, keep_last: 3")
                           .replace("normalize: none}", "normalize: none, augment: [hflip]}"))  # random transforms too
    whole = build(load_recipe(recipe_file), out=tmp_path / "whole")
    env = {**os.environ, "KILL_AT": "2", "PYTHONPATH": str(ROOT)}  # epoch 1's validation: one state on disk
    killed = subprocess.run([sys.executable, "-c", _KILLER, "build", str(recipe_file), "--out", str(tmp_path / "cut"),
                             "--quiet"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert load_state(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = build(load_recipe(recipe_file), out=tmp_path / "cut", resume=True)
    a, b = (load_state(run / "checkpoints" / "last.pt") for run in (whole, resumed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    x, y = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert [m["val_map"] for m in _metrics(whole)] == [m["val_map"] for m in _metrics(resumed)]
