"""Discriminative learning rates at the extremes: lr / lr_decay ** (n-1-i) never overflows, and the plan notes
the trainable groups whose lr is below optimizer.lr * 1e-6 (frozen in all but name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from recipec.pipeline.build import build
from recipec.cli import main
from recipec.compiler.compile import compile_recipe
from recipec.recipe.load import load_recipe
from recipec.train.optim import TINY_LR_RATIO, build_param_groups, group_learning_rates, tiny_learning_rates

DEPTH = 160  # 90 ** 159 > 1.8e308: the plain formula raised OverflowError from group 0 on


def deep_mlp(num_classes: int = 10) -> nn.Module:
    """Flatten, DEPTH - 1 tiny Linear layers, a Linear head at index DEPTH: one layer group per Linear."""
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(3 * 8 * 8, 4)]
    layers += [nn.Linear(4, 4) for _ in range(DEPTH - 2)]
    return nn.Sequential(*layers, nn.Linear(4, num_classes))


def _write(tmp_path: Path, *, trainable: str = "null", epochs: int = 1) -> Path:
    groups = "\n".join(f"  - {{name: g{i:03d}, match: ['^{i + 1}\\.']}}" for i in range(DEPTH))
    path = tmp_path / "deep.yaml"
    path.write_text(f"""\
name: deep
seed: 0
device: cpu
model: {{arch: "tests.train.test_lr_extremes:deep_mlp", head: {{num_classes: 10, at: "{DEPTH}"}}}}
groups:
{groups}
freeze: {{trainable: {trainable}}}
optimizer: {{name: adamw, lr: 1.0e-2, lr_decay: 90, weight_decay: 0.01, scheduler: {{name: none}}}}
data: {{dataset: digits, image_size: 8, per_class: 4, batch_size: 32, normalize: imagenet}}
train: {{epochs: {epochs}}}
export: {{formats: [safetensors]}}
""")
    return path


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


# --------------------------------------------------------------------------- the rates


def test_rates_beyond_a_float_are_zero_not_an_overflow() -> None:
    names = [f"g{i}" for i in range(200)]
    with pytest.raises(OverflowError):  # the formula as written: 100 ** 199 is no float
        _ = 1e-3 / 100.0 ** 199
    rates = group_learning_rates(names, lr=1e-3, lr_decay=100.0)  # a float, as the recipe gives it
    assert list(rates) == names and rates["g199"] == 1e-3
    for i, name in enumerate(names):
        k = 199 - i
        if k <= 154:  # 100 ** 154 is a float: exactly the plain formula, to the last bit
            assert rates[name] == 1e-3 / 100.0 ** k, name
        else:  # exp(log(lr) - k log(decay)): a subnormal, then 0.0
            assert 0.0 <= rates[name] < 1e-300, name
    assert rates["g0"] == 0.0
    values = list(rates.values())
    assert values == sorted(values)  # never increasing towards the earliest group


def test_overrides_win_over_an_overflowing_decay() -> None:
    rates = group_learning_rates([f"g{i}" for i in range(200)], lr=1e-3, lr_decay=100, group_lr={"g0": 5e-4})
    assert rates["g0"] == 5e-4 and rates["g1"] == 0.0


def test_param_groups_of_an_overflowing_decay_build(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path))
    compiled = compile_recipe(recipe)
    lrs = {g["name"]: g["lr"] for g in compiled.optimizer.param_groups}
    assert 0.0 <= lrs["g000"] < 1e-300 and lrs[f"g{DEPTH - 1:03d}"] == 1e-2
    assert lrs[f"g{DEPTH - 2:03d}"] == 1e-2 / 90
    direct = build_param_groups(compiled.model, compiled.groups, lr=1e-2, lr_decay=90)
    assert [g["lr"] for g in direct] == [g["lr"] for g in compiled.optimizer.param_groups]


def test_tiny_rates_are_strictly_below_the_ratio_and_trainable() -> None:
    lr = 1e-3
    rates = {"a": lr * TINY_LR_RATIO, "b": lr * TINY_LR_RATIO / 2, "c": 0.0, "d": lr}
    assert tiny_learning_rates(rates, lr=lr, trainable=["a", "b", "c", "d"]) == {"b": lr * TINY_LR_RATIO / 2, "c": 0.0}
    assert tiny_learning_rates(rates, lr=lr, trainable=["a", "d"]) == {}  # frozen throughout: nothing to say
    assert TINY_LR_RATIO == 1e-6


# --------------------------------------------------------------------------- the plan


def test_plan_notes_every_trainable_group_below_the_ratio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    code, out, err = _cli(["plan", str(path), "--json"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    plan = json.loads(out)
    rates = group_learning_rates([f"g{i:03d}" for i in range(DEPTH)], lr=1e-2, lr_decay=90)
    # 90 ** 3 = 729000: 1.4e-6 x lr, kept; 90 ** 4 and beyond are below 1e-6 x lr
    expected = {name: rate for name, rate in rates.items() if rate < 1e-2 * 1e-6}
    assert list(expected) == [f"g{i:03d}" for i in range(DEPTH - 4)]
    (note,) = plan["notes"]
    assert note["kind"] == "tiny_lr" and note["groups"] == expected and note["threshold"] == pytest.approx(1e-8)
    assert note["groups"]["g000"] < 1e-300 and note["groups"][f"g{DEPTH - 5:03d}"] == pytest.approx(1e-2 / 90 ** 4)
    assert [row["lr"][0] for row in plan["groups"]] == list(rates.values())

    code, out, err = _cli(["plan", str(path)], capsys)
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("note ")]
    assert f"{DEPTH - 4} trainable group(s) get an lr below optimizer.lr x 1e-06 (1.00e-08)" in line
    assert f"g000 {rates['g000']:.2e}, g001 {rates['g001']:.2e}" in line and f"and {DEPTH - 4 - 5} more" in line
    (row,) = [line for line in out.splitlines() if line.split()[:1] == ["0"]]  # the schedule at epoch 0
    assert len(row.split()) == 1 + DEPTH + 1  # the epoch, a cell a group (1.89e-313 too: apart), the trainable count


def test_plan_says_nothing_of_frozen_groups_or_ordinary_rates(tmp_path: Path) -> None:
    last4 = "[" + ", ".join(f"g{i:03d}" for i in range(DEPTH - 4, DEPTH)) + "]"
    plan = compile_recipe(load_recipe(_write(tmp_path, trainable=last4))).plan.to_dict()
    assert plan["notes"] == []  # the tiny-lr groups never train
    assert "note " not in compile_recipe(load_recipe(_write(tmp_path, trainable=last4))).plan.text()
    shallow = compile_recipe(load_recipe(_write(tmp_path), ["optimizer.lr_decay=1"])).plan.to_dict()
    assert shallow["notes"] == []


def test_a_build_with_zero_rate_groups_trains_only_the_rest(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path))
    initial = compile_recipe(recipe).model.state_dict()
    run = build(recipe, out=tmp_path / "run")
    final = load_file(run / "model.safetensors")
    # lr 1e-312 and lr 0.0: AdamW (decoupled decay too) leaves them as they were
    assert torch.equal(final["1.weight"], initial["1.weight"]) and torch.equal(final["9.weight"], initial["9.weight"])
    assert not torch.equal(final[f"{DEPTH}.weight"], initial[f"{DEPTH}.weight"])
    plan = json.loads((run / "plan.json").read_text())
    assert len(plan["notes"][0]["groups"]) == DEPTH - 4
