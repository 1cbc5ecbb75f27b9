"""The plan.json contract and its text rendering."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torchvision

from recipec.compiler.compile import compile_recipe
from recipec.recipe.load import load_recipe


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    sd = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp / "ddp.pt")
    (tmp / "r.yaml").write_text(textwrap.dedent(f"""\
        name: p
        device: cpu
        model: {{arch: resnet18, head: {{num_classes: 5}}}}
        source: {{checkpoint: {tmp / 'ddp.pt'}, rename: [['^module\\.', '']], exclude: ['^fc\\.']}}
        freeze: {{trainable: [layer4, head], unfreeze: {{2: [layer3]}}}}
        optimizer: {{lr: 1.0e-2, lr_decay: 2, weight_decay: 0.05, scheduler: {{name: step, step_epochs: 1, gamma: 0.5}}}}
        train: {{epochs: 3}}
    """))
    return compile_recipe(load_recipe(tmp / "r.yaml")).plan


def test_contract_keys(plan):
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["epochs"] == 3
    report = data["load_report"]
    for key in ("loaded", "missing", "unexpected", "mismatched", "excluded", "adapted", "renamed"):
        assert key in report
    assert report["renamed"]["conv1.weight"] == "module.conv1.weight"
    assert sorted(e["key"] for e in report["excluded"]) == ["module.fc.bias", "module.fc.weight"]
    group = data["groups"][0]
    assert set(group) >= {"name", "params", "trainable", "lr"}


def test_per_epoch_rows(plan):
    rows = {g["name"]: g for g in plan.to_dict()["groups"]}
    assert rows["layer3"]["trainable"] == [False, False, True]
    assert rows["head"]["lr"] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    assert rows["layer4"]["lr"] == pytest.approx([5e-3, 2.5e-3, 1.25e-3])
    # a frozen group still shows its optimizer lr, but gets no weight decay
    assert rows["stem"]["lr"][0] == pytest.approx(1e-2 / 2**5)
    assert rows["layer3"]["weight_decay"] == [0.0, 0.0, 0.05]
    assert rows["layer3"]["batchnorm"] == ["eval", "eval", "train"]
    assert rows["head"]["batchnorm"] == ["-", "-", "-"]
    assert rows["layer1"]["no_decay_params"] == 4 * 2 * 64  # 4 BN layers, weight + bias, 64 channels


def test_text_shows_reasons_and_schedule(plan):
    text = plan.text()
    assert "excluded    module.fc.weight (as fc.weight): by exclude '^fc\\.'" in text
    assert "new         fc.weight: new head, initialised fresh" in text
    assert "eval -> train" in text
    schedule = text.split("schedule")[1].splitlines()
    assert schedule[3].split()[:5] == ["1", ".", ".", ".", "."]


def test_random_init_still_has_a_load_report(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\ndevice: cpu\nmodel: {arch: resnet18}\ntrain: {epochs: 1}\n")
    data = compile_recipe(load_recipe(tmp_path / "r.yaml")).plan.to_dict()
    assert data["load_report"]["loaded"] == [] and data["load_report"]["renamed"] == {}
    assert data["reports"] == {}


def test_cli_plan_tabulates_at_the_real_steps_per_epoch(tmp_path, capsys):
    """onecycle is a per-step schedule: `recipec plan` must show the lrs the build then uses."""
    from recipec.pipeline.build import build
    from recipec.cli import main
    from tests.test_build import TINY

    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(TINY).replace("scheduler: {name: cosine}", "scheduler: {name: onecycle}"))
    with pytest.raises(SystemExit) as info:
        main(["plan", str(path), "--json"])
    assert info.value.code == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["steps_per_epoch"] > 1
    run = build(load_recipe(path), out=tmp_path / "run")
    built = json.loads((run / "plan.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert planned["steps_per_epoch"] == built["steps_per_epoch"]
    for group in planned["groups"]:
        assert group["lr"] == pytest.approx([m["lr"][group["name"]] for m in metrics], rel=1e-9)
    assert [g["lr"] for g in planned["groups"]] == [g["lr"] for g in built["groups"]]
