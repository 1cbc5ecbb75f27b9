"""Training does exactly what the recipe and the plan say (issue 8: items 1, 2, 3, 4, 7, 10, 17)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipec.build import _epoch_line
from recipec.train.schedule import build_scheduler, lr_factor, lr_table

# --------------------------------------------------------------------------- 8.7 onecycle


@pytest.mark.parametrize("total", [20, 7, 101])
@pytest.mark.parametrize(("pct_start", "div_factor", "final_div_factor"),
                         [(0.25, 25.0, 1e4), (0.3, 10.0, 100.0), (0.5, 1.0, 1.0), (0.05, 4.0, 1e3), (0.9, 25.0, 1e4)])
def test_onecycle_matches_torch_step_for_step(total, pct_start, div_factor, final_div_factor) -> None:
    if pct_start * total == 1:
        pytest.skip("torch divides by zero when the rise lasts exactly one step")
    w = nn.Parameter(torch.zeros(1))
    theirs_opt = torch.optim.SGD([w], lr=0.1)
    theirs = torch.optim.lr_scheduler.OneCycleLR(
        theirs_opt, max_lr=[0.1], total_steps=total, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor, anneal_strategy="cos", cycle_momentum=False)
    # recipec scales every group from its own lr with LambdaLR factors; two groups keep their ratio
    ours_opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1},
                                {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.01}], lr=0.1)
    ours = build_scheduler(ours_opt, total_steps=total, scheduler="onecycle", pct_start=pct_start,
                           div_factor=div_factor, final_div_factor=final_div_factor)
    for _ in range(total):
        theirs_lr = theirs_opt.param_groups[0]["lr"]
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(theirs_lr, rel=1e-12)
        assert ours_opt.param_groups[1]["lr"] == pytest.approx(theirs_lr / 10, rel=1e-12)
        theirs_opt.step(), ours_opt.step()
        theirs.step(), ours.step()
    final = 0.1 / div_factor / final_div_factor
    assert theirs_lr == pytest.approx(final, rel=1e-12)  # the last step runs at the final lr
    assert ours_opt.param_groups[0]["lr"] == pytest.approx(final, rel=1e-12)  # and stays there after it


def test_onecycle_plan_table_is_the_scheduler_at_each_epoch_start() -> None:
    kwargs = {"scheduler": "onecycle", "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
    epochs, steps = 4, 5
    table = lr_table(["head"], {"head": 1.0}, epochs=epochs, total_steps=epochs * steps, **kwargs)[0]
    assert table == [lr_factor(e * steps / (epochs * steps), total_steps=epochs * steps, **kwargs) for e in range(epochs)]
    assert table[0] == pytest.approx(1 / 25, rel=1e-12)


# --------------------------------------------------------------------------- 8.17 epoch numbering


def test_console_epoch_is_the_recipe_epoch() -> None:
    metrics = {"epoch": 2, "train_loss": 0.5, "val_loss": None, "trainable_groups": ["head"], "seconds": 1.0}
    line = _epoch_line(metrics, 4)
    assert line.startswith("epoch 2 (3 of 4)  train_loss 0.5000")
