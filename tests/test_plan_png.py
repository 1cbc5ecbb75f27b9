"""`recipec plan --png` and RUN/plan.png: the picture shows exactly what plan.json says."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from recipec.compiler.plan_picture import plot_plan
from tests.tinyrecipes import load_tiny, run_cli, tiny_yaml

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_plan_png_of_gradual_unfreezing_draws_every_group_and_its_frozen_epochs(tmp_path, capsys):
    out = tmp_path / "pictures" / "plan.png"  # a missing folder is made, as for every output
    code, stdout, err = run_cli(["plan", str(ROOT / "recipes" / "gradual-unfreezing.yaml"), "--device", "cpu",
                              "--json", "--png", str(out)], capsys)
    assert code == 0, err
    plan = json.loads(stdout)  # --json stays pure JSON with --png
    width, height = _is_png(out)
    assert width >= 800 and height >= 300

    drawn = plot_plan(plan)  # what the figure's artists hold, read back
    names = [g["name"] for g in plan["groups"]]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert drawn.groups == names  # every group, earliest at the top
    assert drawn.title == "plan: gradual-unfreezing"
    for row in plan["groups"]:
        frozen = [e for e, t in enumerate(row["trainable"]) if not t]
        assert drawn.frozen[row["name"]] == frozen  # hatched exactly where plan.json says frozen
        for e, lr in enumerate(drawn.lr[row["name"]]):
            assert (lr is None) == (e in frozen)
            if lr is not None:
                assert lr == pytest.approx(row["lr"][e], rel=1e-6)
    head = plan["groups"][-1]
    assert head["peak_lr"] == plan["optimizer"]["lr"]  # the last group's lr: what the schedule peaks at
    assert drawn.notes["head"].startswith(f"from epoch 0: peak lr {head['peak_lr']:.2e}")
    # the ULMFiT schedule of the recipe: one more group every five epochs from epoch 5
    assert drawn.frozen["head"] == []
    assert drawn.frozen["layer4"] == list(range(5))
    assert drawn.frozen["stem"] == list(range(25))
    assert "no weights loaded" in drawn.text


def test_the_text_box_counts_every_load_stage():
    plan = {
        "name": "demo", "epochs": 2,
        "groups": [{"name": "body", "trainable": [False, True], "lr": [1e-4, 5e-5]},
                   {"name": "head", "trainable": [True, True], "lr": [1e-3, 5e-4]}],
        "reports": {
            "model.weights": {"source": "IMAGENET1K_V1", "loaded": ["a"] * 120, "new": ["fc.weight", "fc.bias"]},
            "source": {"source": "/data/ddp.pt", "loaded": ["a"] * 100, "adapted": [{"key": "conv1.weight"}],
                       "mismatched": [{"key": "fc.weight"}, {"key": "fc.bias"}], "excluded": [{"key": "x"}],
                       "missing": ["y"]}},
        "parameters": {"total": 1000, "trainable": [10, 1000]},
    }
    drawn = plot_plan(plan)
    assert drawn.counts["model.weights"]["loaded"] == 120 and drawn.counts["model.weights"]["new"] == 2
    assert drawn.counts["source"] == {"loaded": 100, "adapted": 1, "excluded": 1, "mismatched": 2, "missing": 1,
                                      "unexpected": 0, "new": 0, "defaulted": 0}
    assert "loaded 100  adapted 1  excluded 1  mismatched (skipped) 2  missing 1" in drawn.text
    assert "load report (source: /data/ddp.pt)" in drawn.text
    assert drawn.frozen == {"body": [0], "head": []}


def test_thirty_groups_and_three_hundred_epochs(tmp_path):
    n, epochs = 30, 300
    plan = {"name": "big", "epochs": epochs, "groups": [
        {"name": f"blocks.{i}", "trainable": [e >= 10 * (n - 1 - i) for e in range(epochs)],
         "lr": [1e-3 / 1.5 ** (n - 1 - i) * (0.5 + 0.5 * math.cos(math.pi * e / epochs)) for e in range(epochs)]}
        for i in range(n)], "reports": {}}
    drawn = plot_plan(plan, tmp_path / "big.png")
    assert len(drawn.groups) == 30
    assert drawn.frozen["blocks.0"] == list(range(290)) and drawn.frozen["blocks.29"] == []
    _, height = _is_png(tmp_path / "big.png")
    assert height > 900  # the strip grows with the groups: a row stays readable


def test_the_labels_give_the_peak_lr_not_the_warmup_one():
    def row(name, trainable, lr, peak):
        return {"name": name, "trainable": trainable, "lr": lr, "peak_lr": peak}

    # cosine with half an epoch of warmup: epoch 0 starts at a tenth of the lr, the peak falls inside it
    plan = {"name": "warm", "epochs": 4, "reports": {},
            "optimizer": {"name": "adamw", "lr": 1e-3, "scheduler": {"name": "cosine", "warmup_epochs": 0.5}},
            "groups": [row("body", [False, False, True, True], [1e-5, 9e-5, 5e-5, 1.5e-5], 1e-4),
                       row("head", [True] * 4, [1e-4, 9e-4, 5e-4, 1.5e-4], 1e-3)]}
    drawn = plot_plan(plan)
    assert drawn.notes["head"] == "from epoch 0: peak lr 1.00e-03 -> 1.50e-04"  # not the warmup's 1.00e-04
    assert drawn.notes["body"] == "from epoch 2: peak lr 5.00e-05 -> 1.50e-05"  # unfrozen after the peak
    plan["optimizer"]["scheduler"] = {"name": "none"}
    plan["groups"] = [row("head", [True] * 4, [1e-3] * 4, 1e-3)]
    assert plot_plan(plan).notes["head"] == "from epoch 0: lr 1.00e-03"
    del plan["optimizer"], plan["groups"][0]["peak_lr"]  # a plan.json from before: the sampled lrs
    plan["groups"][0]["lr"] = [1e-4, 1e-3, 5e-4, 1e-4]
    assert plot_plan(plan).notes["head"] == "from epoch 0: peak lr 1.00e-03 -> 1.00e-04"


def test_a_bad_png_path_is_refused_before_any_compute(tmp_path, capsys):
    recipe = ROOT / "recipes" / "quickstart.yaml"
    code, out, err = run_cli(["plan", str(recipe), "--png", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err and out == ""
    code, out, err = run_cli(["plan", str(recipe), "--png", str(recipe)], capsys)
    assert code == 2 and "error:" in err and out == ""


TINY = tiny_yaml(optimizer="{name: adamw, lr: 1.0e-2, lr_decay: 2}",
                 data="{dataset: digits, image_size: 8, per_class: 5, batch_size: 32}", train="{epochs: 2}")


def test_a_build_writes_plan_png_and_the_card_shows_it(tmp_path):
    from recipec.pipeline.build import build
    from recipec.card.render import render_card

    run = build(load_tiny(tmp_path, body=TINY), out=tmp_path / "run")
    _is_png(run / "plan.png")
    plan = json.loads((run / "plan.json").read_text())
    assert plot_plan(plan).frozen == {"block1": [0, 1], "block2": [0], "head": []}
    assert "![plan](plan.png)" in (run / "README.md").read_text()
    (run / "plan.png").unlink()  # a run made before plan.png existed: the card leaves the picture out
    card = render_card(run)
    assert "plan.png" not in card and "## Training procedure" in card
