"""train.ema: the EMA equals one computed independently over the same steps, frozen parameters and buffers
are exactly the model's, it updates on cached features, is validated as val_*_ema, and survives a SIGKILL."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from recipec.pipeline.build import build
from recipec.recipe.load import load_recipe
from recipec.train.ema import Ema
from recipec.train.state import load_state
from tests.tinynets import tiny_cnn
from tests.tinyrecipes import killed_build, load_tiny, same_weights, tiny_yaml, write_recipe

TINY = tiny_yaml(train="{epochs: 3, keep_last: 3, ema: {decay: 0.8, warmup: true}}",
                 export="{formats: [safetensors], weights: ema}")


def _independent(initial: dict[str, torch.Tensor], steps: list[tuple[dict[str, torch.Tensor], set[str]]], *,
                 decay: float, warmup: bool, every: int) -> dict[str, torch.Tensor]:
    """ema = d * ema + (1 - d) * weight for trained floating parameters, a copy for everything else."""
    ema = {k: v.clone().double() if v.is_floating_point() else v.clone() for k, v in initial.items()}
    t = 0
    for s, (weights, trained) in enumerate(steps, start=1):
        if s % every:
            continue
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        for k, v in weights.items():
            ema[k] = d * ema[k] + (1 - d) * v.double() if k in trained and v.is_floating_point() else v.clone()
        t += 1
    return ema


@pytest.mark.parametrize(("warmup", "every"), [(False, 1), (True, 1), (True, 3)])
def test_ema_matches_an_independent_average(warmup, every):
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=3, width=4)
    for p in model[0].parameters():  # the first conv stays frozen throughout
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ema = Ema(model, decay=0.9, warmup=warmup, every=every)
    recorded = []
    for step in range(10):
        if step == 5:  # unfreeze mid-run, as freeze.unfreeze does
            model[0].weight.requires_grad_(True)
            optimizer.add_param_group({"params": [model[0].weight]})
        x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.step(model)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        recorded.append(({k: v.clone() for k, v in model.state_dict().items()}, trained))
    expected = _independent(initial, recorded, decay=0.9, warmup=warmup, every=every)
    assert ema.steps == 10 and ema.updates == 10 // every
    final = model.state_dict()
    for k, v in ema.state.items():
        if k in {n for n, _ in model.named_buffers()}:
            assert torch.equal(v, expected[k].to(v.dtype)), k  # buffers: the model's at the last update, exactly
            assert every > 1 or torch.equal(v, final[k]), k
        else:
            assert torch.allclose(v.double(), expected[k], rtol=1e-5, atol=1e-6), k
    assert not torch.equal(ema.state["8.weight"], final["8.weight"])  # it is an average, not a copy


def test_frozen_parameters_stay_exactly_the_models():
    torch.manual_seed(1)
    model = tiny_cnn(num_classes=3, width=4)
    frozen = [n for n, p in model.named_parameters() if not n.startswith("8.")]
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("8."))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    ema = Ema(model, decay=0.999)
    for _ in range(5):
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 6, 6)), torch.randint(0, 3, (4,))).backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.step(model)
    for n in frozen:
        assert torch.equal(ema.state[n], model.state_dict()[n]), n


def test_ema_of_a_run_with_the_feature_cache(tmp_path, monkeypatch):
    """The head trains on cached features in epoch 0: the EMA still follows it, step by step."""
    initial: dict[str, Any] = {}
    recorded: list[tuple[dict[str, torch.Tensor], set[str]]] = []
    real_init, real_step = Ema.__init__, Ema.step

    def init(self: Ema, model: torch.nn.Module, **kwargs: Any) -> None:
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        real_init(self, model, **kwargs)

    def step(self: Ema, model: torch.nn.Module) -> None:
        real_step(self, model)
        recorded.append(({k: v.clone() for k, v in model.state_dict().items()},
                         {n for n, p in model.named_parameters() if p.requires_grad}))

    monkeypatch.setattr(Ema, "__init__", init)
    monkeypatch.setattr(Ema, "step", step)
    run = build(load_tiny(tmp_path, body=TINY), out=tmp_path / "run")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["feature_cache"] is True and metrics[1]["feature_cache"] is False
    for m in metrics:
        assert 0 <= m["val_acc_ema"] <= 1 and m["val_loss_ema"] > 0
    state = load_state(run / "checkpoints" / "last.pt")
    assert len(recorded) == state["step"] == state["extra"]["ema"]["steps"]
    expected = _independent(initial, recorded, decay=0.8, warmup=True, every=1)
    saved, exported = state["extra"]["ema"]["state"], load_file(run / "model.safetensors")
    for k in saved:
        assert torch.allclose(saved[k].double(), expected[k].double(), rtol=1e-5, atol=1e-6), k
        assert torch.equal(exported[k], saved[k]), k  # export.weights: ema
    head_steps = sum(1 for _, trained in recorded if trained == {"8.weight", "8.bias"})
    assert head_steps > 0  # the cached epoch's steps were averaged in
    for k in ("0.weight", "1.weight", "1.running_mean", "1.num_batches_tracked"):  # block1 never trains
        assert torch.equal(saved[k], state["model"][k]), k
    provenance = json.loads(__import__("safetensors").safe_open(run / "model.safetensors", "pt").metadata()
                            ["recipec.provenance"])
    assert provenance["selection"]["weights"] == "ema" and provenance["selection"]["epoch"] == 2


@pytest.mark.slow  # two builds and a subprocess: ~30 s on two busy cores
def test_sigkill_then_resume_gives_the_same_model_and_ema(tmp_path):
    recipe_file = write_recipe(tmp_path, TINY)
    whole = build(load_recipe(recipe_file), out=tmp_path / "whole")
    # the 4th validation (val and val_ema each epoch) is epoch 1's: one state on disk
    killed = killed_build("build", str(recipe_file), "--out", str(tmp_path / "cut"), "--quiet", at=4)
    assert killed.returncode == -9, killed.stderr
    assert load_state(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = build(load_recipe(recipe_file), out=tmp_path / "cut", resume=True)
    a, b = (load_state(run / "checkpoints" / "last.pt") for run in (whole, resumed))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["extra"]["ema"]["state"][k], b["extra"]["ema"]["state"][k]), k
    assert a["extra"]["ema"]["updates"] == b["extra"]["ema"]["updates"]
    assert same_weights(whole, resumed)
