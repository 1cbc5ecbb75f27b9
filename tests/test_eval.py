"""recipec eval: every number of eval/<split>.json checked against an independent computation; the card after it."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from recipec.pipeline.evaluate import classification_metrics
from tests.evalrun import CLASSES, MEAN, STD, TRUST, TRUSTED, cli, shared_run
from tests.tinynets import tiny_cnn


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory)


@pytest.fixture
def copy(run: Path, tmp_path: Path) -> Path:
    from recipec.card.render import write_card

    shutil.copytree(run.parent / "data", tmp_path / "data")
    copied = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(copied / "eval", ignore_errors=True)  # as built: other tests evaluate the shared run
    write_card(copied)
    return copied


def _independent_logits(run: Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The model run by hand: tiny_cnn with the exported tensors; each image as documented: RGB, values
    in [0, 1], resized to 16x16 (bilinear, antialiased), normalised with the ImageNet mean and std."""
    model = tiny_cnn(num_classes=len(CLASSES), width=8)
    model.load_state_dict(load_file(run / "model.safetensors"))
    model.eval()
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for file in sorted((run.parent / "data" / split / name).iterdir()):
            x = torch.from_numpy(np.array(Image.open(file).convert("RGB"))).permute(2, 0, 1).float() / 255
            x = torch.nn.functional.interpolate(x[None], size=(16, 16), mode="bilinear", antialias=True,
                                                align_corners=False)[0]
            images.append((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
            labels.append(label)
    with torch.no_grad():
        return model(torch.stack(images)).double(), torch.tensor(labels)


def test_every_number_of_test_json_is_computed_independently(run: Path, capsys) -> None:
    code, out, err = cli(capsys, "eval", str(run), "--split", "test", "--json", *TRUSTED)
    assert code == 0, err
    printed = json.loads(out)
    written = json.loads((run / "eval" / "test.json").read_text())
    assert printed == written
    logits, labels = _independent_logits(run)
    n, k = len(labels), len(CLASSES)
    predicted = logits.argmax(1).tolist()
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(labels.tolist(), predicted):
        confusion[t][p] += 1
    assert written["split"] == "test" and written["n"] == n == 4 * k
    assert written["classes"] == CLASSES
    assert written["confusion"] == confusion
    assert written["accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(k)) / n)
    loss = -sum(torch.log_softmax(logits[i], 0)[labels[i]].item() for i in range(n)) / n
    assert written["loss"] == pytest.approx(loss, rel=1e-5)
    top5 = sum(labels[i].item() in logits[i].topk(5).indices.tolist() for i in range(n)) / n
    assert written["top5"] == pytest.approx(top5)
    precisions, recalls, f1s, supports = [], [], [], []
    for i, name in enumerate(CLASSES):
        support = sum(confusion[i])  # the row: examples of class i
        predicted_i = sum(row[i] for row in confusion)  # the column: predictions of class i
        p = confusion[i][i] / predicted_i if predicted_i else 0.0
        r = confusion[i][i] / support if support else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        assert written["per_class"][name] == pytest.approx({"precision": p, "recall": r, "f1": f1, "support": support})
        precisions.append(p), recalls.append(r), f1s.append(f1), supports.append(support)
    assert list(written["per_class"]) == CLASSES
    assert written["macro"] == pytest.approx({"precision": sum(precisions) / k, "recall": sum(recalls) / k,
                                              "f1": sum(f1s) / k})
    w = [s / n for s in supports]
    assert written["weighted"] == pytest.approx({
        "precision": sum(a * b for a, b in zip(precisions, w)), "recall": sum(a * b for a, b in zip(recalls, w)),
        "f1": sum(a * b for a, b in zip(f1s, w))})
    assert (run / "eval" / "test-confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_follow_scikit_learn_with_zero_division_0() -> None:
    from sklearn.metrics import precision_recall_fscore_support

    # class 2 is never predicted (precision 0), class 3 has no examples (recall 0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    predicted = [0, 1, 1, 1, 0, 1, 3]
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 4).double()
    result = classification_metrics(logits, labels, ["a", "b", "c", "d"])
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predicted, labels=[0, 1, 2, 3], average=average,
                                                     zero_division=0)
        assert result[average] == pytest.approx({"precision": p, "recall": r, "f1": f})
    assert "top5" not in result  # 4 classes
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_eval_of_a_run_is_eval_of_its_exports(run: Path, tmp_path: Path) -> None:
    from recipec.pipeline.evaluate import evaluate

    of_run, _ = evaluate(run, split="val", trust_factories=TRUST)
    for name in ("model.safetensors", "model.pt", "model.onnx"):
        of_file, _ = evaluate(run / name, split="val", trust_factories=TRUST, out=tmp_path / f"{name}.json")
        assert of_file["confusion"] == of_run["confusion"], name
        assert of_file["loss"] == pytest.approx(of_run["loss"], abs=1e-5), name
        assert of_file["export"] == name
    assert json.loads((tmp_path / "model.pt.json").read_text())["n"] == of_run["n"]
    assert (tmp_path / "model.pt-confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_the_card_lists_true_hashes_and_the_results(copy: Path, capsys) -> None:
    from huggingface_hub import ModelCard

    before = (copy / "README.md").read_text()
    for name in ("model.safetensors", "model.pt", "model.onnx"):
        digest = hashlib.sha256((copy / name).read_bytes()).hexdigest()
        assert f"| `{name}` | " in before and f"`{digest}`" in before, name
    assert "Held-out evaluation" not in before
    code, out, err = cli(capsys, "eval", str(copy), *TRUSTED)  # default: the test split, as the run has one
    assert code == 0, err
    assert out.startswith("test: 28 images") and f"wrote {copy / 'README.md'}" in out
    result = json.loads((copy / "eval" / "test.json").read_text())
    card = (copy / "README.md").read_text()
    assert "### Held-out evaluation" in card and "![confusion matrix, test](eval/test-confusion.png)" in card
    row = next(line for line in card.splitlines() if line.startswith("| test | "))
    assert f"| {result['n']} | {result['accuracy']:.4g} |" in row
    assert f"{result['macro']['f1']:.4g}" in row
    parsed = ModelCard.load(copy / "README.md")
    test = [r for r in parsed.data.eval_results if r.dataset_split == "test"]
    assert {(r.metric_type, r.metric_value) for r in test} == {
        ("accuracy", float(f"{result['accuracy']:.4g}")), ("top_5_accuracy", float(f"{result['top5']:.4g}")),
        ("f1", float(f"{result['macro']['f1']:.4g}"))}
    assert all(r.dataset_args == {"num_examples": result["n"]} and f"{result['n']} images" in r.dataset_name
               for r in test)
    assert [r.dataset_split for r in parsed.data.eval_results].count("validation") == 1  # the training-time val


def test_without_a_test_split_the_default_is_val(copy: Path, capsys) -> None:
    shutil.rmtree(copy.parent / "data" / "test")
    run = copy
    code, out, err = cli(capsys, "eval", str(run), *TRUSTED)
    assert code == 0, err
    assert "no test split" in err and out.startswith(f"val: {3 * len(CLASSES)} images")
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["val-confusion.png", "val.json"]
    code, _, err = cli(capsys, "eval", str(run), "--split", "test", *TRUSTED)
    assert code == 2 and "Traceback" not in err
    # one clean sentence: what is missing, what there is, the two ways on (no "(none (...)" inside)
    assert re.fullmatch(r"error: the run's data has no test split \(it has train: .+; val: .+\); add one "
                        r"\(root/test/<class>/<image>, or test rows in the manifest\), or evaluate other data with "
                        r"--data DIR_OR_MANIFEST\n", err), err


def test_other_data_is_kept_beside_the_runs_split(copy: Path, capsys) -> None:
    code, out, err = cli(capsys, "eval", str(copy), "--data", str(copy.parent / "data" / "test"), "--json",
                             *TRUSTED)
    assert code == 0, err
    other = json.loads(out)
    assert other["data"]["override"] == "test" and other["n"] == 4 * len(CLASSES)
    assert (copy / "eval" / "test-test.json").is_file() and not (copy / "eval" / "test.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--split", "train"], "'train' is not one of"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_arguments_exit_2(run: Path, capsys, args: list[str], message: str) -> None:
    code, _, err = cli(capsys, "eval", str(run), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_missing_or_foreign_target_exits_2(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "eval", str(tmp_path / "nowhere"))
    assert code == 2 and "no such run directory or export" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "eval", str(tmp_path / "empty"))
    assert code == 2 and "holds no export" in err
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    code, _, err = cli(capsys, "eval", str(tmp_path / "foreign.safetensors"))
    assert code == 2 and "no recipec recipe" in err


def test_an_untrusted_factory_is_refused(run: Path, capsys) -> None:
    code, _, err = cli(capsys, "eval", str(run))
    assert code == 2 and "tests.tinynets:tiny_cnn" in err


def test_confusion_png_for_fifty_classes(tmp_path: Path) -> None:
    from recipec.pipeline.evaluate import plot_confusion

    k = 50
    confusion = (np.eye(k, dtype=int) * 9 + 1).tolist()
    plot_confusion(confusion, [f"class-{i:02d}-with-a-long-name" for i in range(k)], tmp_path / "c.png")
    image = Image.open(tmp_path / "c.png")
    assert image.size[0] >= 1500 and math.isclose(image.size[0] / image.size[1], 1.0, rel_tol=0.2)


def test_a_sharded_export_lists_the_index_and_every_shard(copy: Path) -> None:
    from recipec.card.render import write_card
    from recipec.weights import formats

    checkpoint = formats.load(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()
    written = formats.save(checkpoint.state_dict, copy / "model.safetensors", metadata=checkpoint.metadata,
                           shard_size=2048)
    assert len(written) > 2 and written[-1].name == "model.safetensors.index.json"
    card = write_card(copy).read_text()
    for path in written:
        assert f"| `{path.name}` | " in card and f"`{hashlib.sha256(path.read_bytes()).hexdigest()}`" in card
    assert 'recipec.load_predictor("model.safetensors.index.json"' in card
