"""recipec build end to end: the run directory contract, exact resume, exports that load alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import recipec
from recipec.pipeline.build import build
from recipec.errors import RecipecError, RunDirectoryError
from recipec.recipe.load import load_recipe
from recipec.train.state import load_state
from tests.tinyrecipes import load_tiny, read_metrics, run_cli, same_weights, tiny_yaml, write_chain

TRUST = ["tests.tinynets:tiny_cnn"]  # the factory TINY names: trusted where an export rebuilds it
TINY = tiny_yaml(model='{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10, dropout: 0.1}}',
                 data="{dataset: digits, image_size: 8, per_class: 20, batch_size: 32, augment: [hflip]}",
                 train="{epochs: 3, keep_last: 2}", export="{formats: [safetensors, torch]}")


def _recipe(tmp_path: Path, *overrides: str):
    return load_tiny(tmp_path, *overrides, body=TINY)


def test_run_directory_contract(tmp_path):
    run = build(_recipe(tmp_path), out=tmp_path / "run")
    names = {p.name for p in run.iterdir()}
    assert {"recipe.yaml", "plan.json", "metrics.jsonl", "checkpoints", "model.safetensors", "model.pt",
            "curves.png"} <= names
    # named by the epoch they end, counted from 0 as metrics.jsonl, the plan and the card count (keep_last: 2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "epoch-0001.pt", "epoch-0002.pt",
                                                                        "last.pt"]
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    for name, epoch in (("epoch-0001.pt", 1), ("epoch-0002.pt", 2)):
        state = load_state(run / "checkpoints" / name)
        assert (state["history"][-1]["epoch"], state["epoch"]) == (epoch, epoch + 1)  # epoch + 1 completed
    for m in metrics:
        assert set(m) >= {"epoch", "train_loss", "val_loss", "val_acc", "lr", "trainable_groups",
                          "trainable_params", "seconds"}
        assert set(m["lr"]) == {"block1", "block2", "head"}  # frozen groups included
    assert metrics[0]["trainable_groups"] == ["head"] and metrics[1]["trainable_groups"] == ["block2", "head"]
    plan = json.loads((run / "plan.json").read_text())
    assert plan["groups"][0]["lr"][0] == pytest.approx(metrics[0]["lr"]["block1"])
    assert load_recipe(run / "recipe.yaml") == load_recipe(tmp_path / "tiny.yaml")
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_mark_the_unfreeze_epochs_and_the_exported_one(tmp_path):
    from recipec.pipeline.outputs import plot_curves

    groups = [["head"], ["head"], ["block2", "head"], ["block2", "head"], ["block1", "block2", "head"]]
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "val_acc": 0.5 + e / 10,
                "trainable_groups": g} for e, g in enumerate(groups)]
    best = {"weights": "model", "epoch": 3, "metric": "val_acc", "mode": "max", "value": 0.8}
    marked = plot_curves(history, tmp_path / "curves.png", selection=best)
    assert marked == {"unfreeze": {2: "unfreeze block2", 4: "unfreeze block1"},
                      "selected": {3: "exported: epoch 3, best val_acc 0.8"}}
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    last = best | {"weights": "last", "epoch": 4, "value": None}  # best fell back to the last epoch
    assert plot_curves(history, tmp_path / "c.png", selection=last)["selected"] == {4: "exported: epoch 4, the last epoch"}
    no_val = [m | {"val_loss": None, "val_acc": None, "trainable_groups": ["head"]} for m in history]
    assert plot_curves(no_val, tmp_path / "c.png") == {"unfreeze": {}, "selected": {}}


def test_frozen_group_and_its_batchnorm_never_change(tmp_path):
    recipe = _recipe(tmp_path, "export.weights=last")  # the best epoch may be 0, before block2 trains
    initial = recipec.compile_recipe(recipe).model.state_dict()
    run = build(recipe, out=tmp_path / "run")
    final = load_file(run / "model.safetensors")
    for key in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(final[key], initial[key]), key
    assert not torch.equal(final["8.weight"], initial["8.weight"])
    assert not torch.equal(final["3.weight"], initial["3.weight"])


def test_extending_a_run_equals_running_it_whole(tmp_path):
    # a constant lr: with cosine the first epochs of a 2-epoch run follow another schedule
    constant = "optimizer.scheduler={name: none}"
    whole = build(_recipe(tmp_path, constant), out=tmp_path / "whole")
    part = build(_recipe(tmp_path, constant, "train.epochs=2"), out=tmp_path / "part")
    build(_recipe(tmp_path, constant), out=part, resume=True)
    assert same_weights(whole, part)
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in read_metrics(whole)]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in read_metrics(part)]


def test_interrupt_leaves_a_resumable_checkpoint(tmp_path, monkeypatch):
    whole = build(_recipe(tmp_path), out=tmp_path / "whole")
    import recipec.train.loop as loop

    real = loop.evaluate
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C during the second epoch's validation
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(_recipe(tmp_path), out=tmp_path / "cut")
    monkeypatch.setattr(loop, "evaluate", real)
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    build(_recipe(tmp_path), out=tmp_path / "cut", resume=True)
    assert same_weights(whole, tmp_path / "cut")


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path):
    recipe = _recipe(tmp_path, "train.epochs=2")
    build(recipe, out=tmp_path / "run")
    with pytest.raises(RunDirectoryError, match="--resume"):
        build(recipe, out=tmp_path / "run")
    with pytest.raises(RunDirectoryError, match="does not exist"):
        build(recipe, out=tmp_path / "other", resume=True)
    with pytest.raises(RunDirectoryError, match="optimizer"):
        build(_recipe(tmp_path, "train.epochs=2", "optimizer.lr=0.5"), out=tmp_path / "run", resume=True)


def test_overwrite_starts_the_run_over_and_keeps_what_recipec_did_not_write(tmp_path, capsys):
    run = tmp_path / "run"
    build(_recipe(tmp_path), out=run)  # from Python: progress printed by default
    out = capsys.readouterr().out
    assert "epoch 0 (1 of 3)  train_loss" in out and "epoch 2 (3 of 3)" in out and f"wrote {run / 'README.md'}" in out
    (run / "eval").mkdir()
    (run / "eval" / "test.json").write_text("{}")  # the old model's results
    (run / "notes.txt").write_text("mine")  # the directory is recipec's (.recipec-run), this file is not
    with pytest.raises(RunDirectoryError, match="add --resume to continue it, --overwrite to start it over"):
        build(_recipe(tmp_path, "train.epochs=2"), out=run, log=None)
    with pytest.raises(RecipecError, match="num_classes"):  # bad input: the earlier run is left whole
        build(_recipe(tmp_path, "model.head.num_classes=3"), out=run, overwrite=True, log=None)
    assert (run / "checkpoints" / "epoch-0002.pt").exists() and (run / "eval" / "test.json").exists()
    with pytest.raises(RunDirectoryError, match="choose one"):
        build(_recipe(tmp_path, "train.epochs=2"), out=run, resume=True, overwrite=True, log=None)

    lines: list[str] = []
    build(_recipe(tmp_path, "train.epochs=2"), out=run, overwrite=True, log=lines.append)
    assert capsys.readouterr().out == ""  # a log of its own: nothing printed
    assert lines[0] == f"removed the earlier run in {run} (--overwrite)"
    assert [m["epoch"] for m in read_metrics(run)] == [0, 1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "epoch-0000.pt", "epoch-0001.pt",
                                                                        "last.pt"]
    assert not (run / "eval").exists() and (run / "notes.txt").read_text() == "mine"
    build(_recipe(tmp_path, "train.epochs=2"), out=run, overwrite=True, log=None)
    assert capsys.readouterr().out == ""  # log=None: silent

    foreign = tmp_path / "project"  # not recipec's: refused as without --overwrite, nothing touched
    foreign.mkdir()
    (foreign / "README.md").write_text("my project")
    with pytest.raises(RunDirectoryError, match="is not a recipec run directory"):
        build(_recipe(tmp_path), out=foreign, overwrite=True, log=None)
    assert [p.name for p in foreign.iterdir()] == ["README.md"]


def test_overwrite_never_deletes_an_input_or_follows_a_symlink(tmp_path):
    from recipec.pipeline.rundir import claim_run_directory, clear_run_directory

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".recipec-run").write_text("")
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    with pytest.raises(RunDirectoryError, match=r"best\.pt: --overwrite would delete this input"), \
            claim_run_directory(run, inputs=[run / "checkpoints" / "best.pt"], overwrite=True):
        pass
    with claim_run_directory(run, inputs=[run / "checkpoints" / "best.pt"]):  # a resume reads it in place
        pass
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    (elsewhere / "keep.pt").write_bytes(b"x")
    (run / "checkpoints" / "best.pt").unlink()
    (run / "checkpoints").rmdir()
    (run / "checkpoints").symlink_to(elsewhere)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "mine.txt").write_text("x")
    with claim_run_directory(run, overwrite=True):
        removed = clear_run_directory(run)
    assert [p.name for p in removed] == ["checkpoints", "metrics.jsonl"]  # checkpoints/ first
    assert sorted(p.name for p in run.iterdir()) == [".recipec-run", "mine.txt"]
    assert (elsewhere / "keep.pt").read_bytes() == b"x"  # the link went, not what it points to


def test_cli_overwrite_reaches_the_build_and_excludes_resume(tmp_path, capsys, monkeypatch):
    import recipec.pipeline.build as pipeline_build

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    asked = {}
    monkeypatch.setattr(pipeline_build, "build", lambda spec, **kwargs: asked.update(kwargs) or Path(kwargs["out"]))
    code, out, err = run_cli(["build", str(recipe), "--out", str(tmp_path / "run"), "--overwrite"], capsys)
    assert code == 0 and asked["overwrite"] is True and asked["resume"] is False, err
    assert out == f"done: {tmp_path / 'run'}\n"
    code, _, err = run_cli(["build", str(recipe), "--overwrite", "--resume"], capsys)
    assert code == 2 and "--overwrite" in err and "choose one" in err


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_exports_load_alone_and_predict_the_same(tmp_path, name):
    recipe = _recipe(tmp_path, "train.epochs=2")
    run = build(recipe, out=tmp_path / "run")
    model = recipec.load(run / name, trust_factories=TRUST)
    reference = recipec.load(run / "model.safetensors", trust_factories=TRUST)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(model(x), reference(x))
    assert not model.training
    state = torch.load(run / "model.pt", weights_only=True)
    assert "recipec.recipe" in state["recipec_metadata"]


def test_float16_export(tmp_path):
    run = build(_recipe(tmp_path, "train.epochs=2", "export.dtype=float16", "export.formats=[safetensors]"),
                out=tmp_path / "run")
    tensors = load_file(run / "model.safetensors")
    assert tensors["8.weight"].dtype == torch.float16
    assert tensors["1.num_batches_tracked"].dtype == torch.int64
    assert recipec.load(run / "model.safetensors", trust_factories=TRUST)(torch.randn(1, 3, 8, 8).half()).shape == (1, 10)


def test_head_size_must_match_the_data(tmp_path):
    with pytest.raises(RecipecError) as info:
        build(_recipe(tmp_path, "model.head.num_classes=7"), out=tmp_path / "run")
    assert info.value.paths == [("model", "head", "num_classes")]
    assert not (tmp_path / "run").exists()


def test_onnx_export_matches_the_torch_model(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime

    run = build(_recipe(tmp_path, "train.epochs=2", "export.formats=[safetensors, onnx]", "export.dtype=float16"),
                out=tmp_path / "run")
    session = onnxruntime.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 8, 8)
    (logits,) = session.run(None, {"input": x.numpy()})
    reference = recipec.load(run / "model.safetensors", trust_factories=TRUST).float()(x).detach().numpy()
    assert logits.shape == (3, 10)
    assert np.abs(logits - reference).max() < 1e-2  # the safetensors export is float16, the graph float32
    props = {p.key: p.value for p in onnx.load(run / "model.onnx").metadata_props}
    assert "recipec.recipe" in props and "recipec.provenance" in props


def test_source_recipe_builds_the_upstream_once_and_starts_from_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    down = write_chain(tmp_path)
    lines: list[str] = []
    run = build(load_recipe(down), log=lines.append)
    assert any("building upstream recipe" in line for line in lines)
    upstream = load_file(tmp_path / "runs" / "upstream" / "model.safetensors")
    final = load_file(run / "model.safetensors")
    for key in ("0.weight", "1.running_mean", "3.weight"):  # the frozen body is the upstream's
        assert torch.equal(final[key], upstream[key]), key
    plan = json.loads((run / "plan.json").read_text())
    assert sorted(e["key"] for e in plan["load_report"]["excluded"]) == ["8.bias", "8.weight"]
    # a second downstream run reuses the upstream run instead of building it again
    lines.clear()
    build(load_recipe(down), out=tmp_path / "again", log=lines.append)
    assert not any("building upstream" in line for line in lines)


def test_feature_cache_trains_the_head_like_full_passes(tmp_path):
    plain = ["data.augment=[]", "freeze.unfreeze={2: [block2]}"]
    cached = build(_recipe(tmp_path, *plain), out=tmp_path / "cached")
    full = build(_recipe(tmp_path, *plain, "train.feature_cache=off"), out=tmp_path / "full")
    assert [m["feature_cache"] for m in read_metrics(cached)] == [True, True, False]
    assert [m["feature_cache"] for m in read_metrics(full)] == [False, False, False]
    a, b = load_file(cached / "model.safetensors"), load_file(full / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    for m, n in zip(read_metrics(cached), read_metrics(full)):
        assert m["train_loss"] == pytest.approx(n["train_loss"], rel=1e-4)


def test_feature_cache_stays_off_when_the_prefix_is_random(tmp_path):
    run = build(_recipe(tmp_path, "train.epochs=2"), out=tmp_path / "run")  # hflip augmentation
    assert [m["feature_cache"] for m in read_metrics(run)] == [False, False]


def test_resuming_an_early_stopped_run_trains_no_further(tmp_path):
    recipe = _recipe(tmp_path, "train.epochs=5", "train.early_stopping={metric: val_loss, patience: 1, min_delta: 100}")
    run = build(recipe, out=tmp_path / "run")
    stopped = read_metrics(run)
    assert len(stopped) == 2 and stopped[-1]["early_stopped"]
    before = load_file(run / "model.safetensors")
    (run / "model.safetensors").unlink()  # as if interrupted after the last checkpoint, before the exports
    build(recipe, out=tmp_path / "run", resume=True)
    assert [m["epoch"] for m in read_metrics(run)] == [0, 1]
    after = load_file(run / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_names_a_key_an_older_recipec_did_not_write(tmp_path):
    import yaml

    from recipec.pipeline.runs import check_resumable as _check_resumable
    from recipec.recipe.load import dump_recipe

    recipe = _recipe(tmp_path)
    old = yaml.safe_load(dump_recipe(recipe))
    del old["freeze"]["dropout"]  # a key added after the checkpoint was written
    with pytest.raises(RunDirectoryError, match=r"freeze\.dropout is not in the checkpoint's recipe: .*earlier recipec"):
        _check_resumable(recipe, yaml.safe_dump(old))
    changed = yaml.safe_load(dump_recipe(recipe))
    changed["optimizer"]["lr"] = 0.5
    with pytest.raises(RunDirectoryError, match=r"the recipe changed since the checkpoint at optimizer\.lr"):
        _check_resumable(recipe, yaml.safe_dump(changed))
    _check_resumable(recipe, dump_recipe(recipe))  # the same recipe resumes
