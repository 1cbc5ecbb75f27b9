"""The build pipeline: data -> compile -> fit -> export, into one run directory.

```
runs/<name>/
  recipe.yaml       the resolved recipe          plan.json      load report + group/epoch table
  metrics.jsonl     one object per epoch         checkpoints/   last.pt (+ kept epochs): what --resume needs
  model.safetensors / model.pt / model.onnx      curves.png     training curves
  README.md         the model card
```

Every file is written atomically. A run that fails or is interrupted leaves its last
complete checkpoint; ``resume=True`` continues from it and, because the batch order is a
function of (seed, epoch) and every RNG is restored, ends with the same weights as an
uninterrupted run.

Beside it, in the same layer: :mod:`recipec.pipeline.planning` (the data against the recipe, and what
``recipec plan`` shows), :mod:`recipec.pipeline.runs` (where the run goes, what a killed build
left, whether ``--resume`` may continue) and :mod:`recipec.pipeline.upstream` (``source.recipe``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recipec import _json as clean_json
from recipec._atomic import atomic_write_text
from recipec.card.render import write_card
from recipec.compiler.compile import compile_recipe
from recipec.compiler.data_config import build_data, check_sampler, data_config, data_plan
from recipec.compiler.fit_config import (
    craft_plan,
    fit_config,
    head_cache,
    start_training,
    task_of_recipe,
    threshold_provenance,
    training_of,
)
from recipec.compiler.plan_picture import plot_plan
from recipec.data.augment import batch_mix
from recipec.device import resolve_device
from recipec.errors import BuildInterrupted, RunDirectoryError
from recipec.pipeline.adapters import adapter_provenance, check_adapter_world, finish_adapters
from recipec.pipeline.checks import check_inputs
from recipec.pipeline.artifacts import check_artifacts, evaluates_artifacts, quantize_run
from recipec.pipeline.outputs import epoch_line, export_model, in_background, plot_curves, provenance_of
from recipec.pipeline.planning import check_classes, note_data, steps_per_epoch
from recipec.pipeline.resume import check_same_run, continue_schedule, resume_state, run_identity, saved_epochs
from recipec.pipeline.rundir import claim_run_directory, clear_run_directory
from recipec.pipeline.runs import check_resumable, remove_temporaries, run_directory
from recipec.pipeline import smoke as smoke_runs  # smoke_runs.smoke_data: looked up when called (tests replace it)
from recipec.pipeline.upstream import resolve_upstream
from recipec.recipe.load import dump_recipe
from recipec.recipe.spec import Recipe
from recipec.tracking.tracker import open_tracking
from recipec.train import select
from recipec.train.cache import head_only_epochs
from recipec.train.distributed import setup, shard_loader, teardown
from recipec.train import loop  # loop.fit and loop.grad_scaler, looked up when called (tests replace them)
from recipec.train.state import (
    RunPoint,
    checkpoint_files,
    checkpoint_paths,
    newest_checkpoint,
    restore_state,
    rotate_checkpoints,
    save_state,
)

if TYPE_CHECKING:
    from recipec.progress import Progress

__all__ = ["build", "print_line"]


def print_line(line: str) -> None:
    """Print one line of a build's progress to stdout at once (``build``'s default ``log``)."""
    print(line, flush=True)


def build(recipe: Recipe, *, out: str | Path | None = None, resume: bool = False, overwrite: bool = False,
          device: str | None = None, log: Callable[[str], None] | None = print_line, smoke: int | None = None,
          _chain: tuple[str, ...] = (), progress: Progress | None = None) -> Path:
    """Compile, fine-tune and export a recipe.

    Args:
        recipe: a validated recipe.
        out: the run directory (default ``runs/<name>``).
        resume: continue from the newest intact training state in ``checkpoints/`` (``last.pt``, or an
            ``epoch-*.pt`` when that is newer or ``last.pt`` is damaged); refused when the recipe,
            the data split or the source file changed, or ``train.epochs`` cannot honestly change.
        overwrite: start the run over: what an earlier build wrote into the run directory is removed
            (only a directory recipec made, only the files a build writes; see
            :mod:`recipec.pipeline.rundir`) once the inputs are checked, just before the new run is written.
        device: overrides ``recipe.device``.
        log: called with one line per epoch and per written file; by default they are printed to
            stdout (:func:`print_line`); ``None`` prints nothing.
        smoke: a smoke run: one epoch per phase of the freezing schedule, each on ``smoke``
            training and validation batches, then exports and card (see :mod:`recipec.pipeline.smoke`).
        progress: a terminal display (:func:`recipec.progress.for_terminal`): a status line per phase and
            a bar per epoch; pass its ``log`` as ``log`` so lines replace them.

    Returns:
        The run directory.

    Raises:
        RecipecError: bad input (exit 2) before anything is written, or a failed run (exit 1).
        BuildInterrupted: Ctrl-C (a ``KeyboardInterrupt``), naming the newest checkpoint kept.

    Example:
        >>> run = build(load_recipe("recipes/quickstart.yaml"), out="runs/qs")   # prints each epoch
        >>> run = build(load_recipe("recipes/quickstart.yaml"), out="runs/qs", overwrite=True, log=None)
        >>> (run / "model.safetensors").exists()
        True
    """
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite: choose one (continue the run, or start it over)")
    world, target = setup(resolve_device(device or recipe.device))
    try:
        # one build at a time, only in a directory recipec made, never over its own inputs (recipec.pipeline.rundir)
        inputs = (recipe.source.checkpoint if recipe.source else None, recipe.card.template)
        with claim_run_directory(run_directory(recipe, out), world=world, inputs=inputs, overwrite=overwrite), \
                contextlib.ExitStack() as background:  # what _build draws meanwhile (plan.png) is done before this returns
            return _build(recipe, _Asked(out, resume, smoke, _chain, overwrite), device=target, world=world, log=log,
                          progress=progress, background=background)
    except BuildInterrupted:
        raise  # an upstream build's (source.recipe): it names its own run
    except KeyboardInterrupt as exc:
        run = run_directory(recipe, out)
        kept = newest_checkpoint(run / "checkpoints")
        raise BuildInterrupted(str(run), str(kept[0]) if kept else None, kept[1] if kept else None) from exc
    finally:
        teardown(world)


@dataclass(frozen=True)
class _Asked:
    """What the caller of :func:`build` asked for, handed on as one."""

    out: str | Path | None
    resume: bool
    smoke: int | None
    chain: tuple[str, ...]   # the upstream recipes being built, outermost first (source.recipe)
    overwrite: bool = False  # remove the earlier run before writing


def _build(recipe: Recipe, asked: _Asked, *, device: torch.device, world: Any, log: Callable[[str], None] | None,
           progress: Progress | None = None, background: contextlib.ExitStack) -> Path:
    out, resume, smoke, _chain = asked.out, asked.resume, asked.smoke, asked.chain
    say = log if log is not None and world.main else (lambda line: None)
    status = progress.status if progress is not None and world.main else (lambda text: None)
    # several ranks must not race to build an upstream run: under --nproc it must exist already
    check_inputs(recipe)  # every missing path and data problem at once, before anything is written
    recipe = resolve_upstream(recipe, build_missing=not world.distributed, build=build, log=say, _chain=_chain,
                              smoke_into=Path(out or run_directory(recipe)).parent if smoke else None)
    if smoke:
        recipe = smoke_runs.smoke_recipe(recipe)
        say(f"smoke run: {recipe.train.epochs} epoch(s), one per phase of the schedule, {smoke} batch(es) each")
    run = run_directory(recipe, out)
    tracking = open_tracking(recipe, run, main=world.main, smoke=bool(smoke), resume=resume)  # exit 2 now if missing
    state = None
    if resume:
        state = resume_state(run / "checkpoints", say)
        check_resumable(recipe, state["recipe"], run)
    elif checkpoint_files(run / "checkpoints") and not asked.overwrite:
        held = ", ".join(p.name for p in checkpoint_files(run / "checkpoints")[:3])
        raise RunDirectoryError(f"{run} already holds a run (checkpoints/{held}); add --resume to continue it, "
                                "--overwrite to start it over, or choose another --out")

    status("loading the data")
    data = build_data(data_config(recipe, device=device.type))
    note_data(recipe, data, say)
    if smoke:
        data = smoke_runs.smoke_data(data, smoke)
    check_sampler(recipe.data.sampler, distributed=world.distributed)  # before anything is written
    check_adapter_world(recipe, distributed=world.distributed)
    if world.distributed:
        data.train = shard_loader(data.train, world, recipe.seed)
    check_classes(recipe, data)
    steps = steps_per_epoch(recipe, data)
    identity = run_identity(recipe, data)  # kept in every training state; a resume must match it
    if state is not None:
        check_same_run(recipe, state, identity, steps, say)
    status(f"compiling {recipe.model.arch} and loading weights")
    compiled = compile_recipe(recipe, device=str(device), steps_per_epoch=steps)
    recipe_yaml = dump_recipe(recipe, relative_to=run)  # paths in the run's tree relative: it can move
    compiled.plan.data.update(craft_plan(recipe, data))  # loss (class weights resolved), ema, select
    compiled.plan.data.update(data_plan(recipe, data))  # transforms in order, mixup/cutmix, sampler

    if world.main:
        if asked.overwrite and clear_run_directory(run):  # the inputs are checked: the new run starts here
            say(f"removed the earlier run in {run} (--overwrite)")
        run.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run)
        atomic_write_text(run / "recipe.yaml", recipe_yaml)
        plan = compiled.plan.to_dict() | {"data": data.info, "steps_per_epoch": steps, "world_size": world.size}
        atomic_write_text(run / "plan.json", clean_json.dumps(plan, indent=2) + "\n")
        # the same plan as a picture (recipec plan --png), shown in the card: drawn while training starts
        background.enter_context(in_background(plot_plan, plan, run / "plan.png"))
        if data.info.get("skipped_images"):
            atomic_write_text(run / "skipped_images.txt", "".join(f"{p}\n" for p in data.info["skipped_images"]))

    history: list[dict[str, Any]] = []
    start = 0
    scaler = loop.grad_scaler(recipe.train.amp, compiled.device)
    if state is not None:
        restore_state(state, model=compiled.model, optimizer=compiled.optimizer, scheduler=compiled.scheduler,
                      scaler=scaler)
        if saved_epochs(state) != recipe.train.epochs:
            continue_schedule(compiled.optimizer, compiled.scheduler)
        history, start = list(state["history"]), int(state["epoch"])
        say(f"resumed {run} at epoch {start}")
    step = {"n": start * steps}
    train = recipe.train
    criterion, ema, selection = start_training(recipe, compiled, state, history, run / "checkpoints", say,
                                               main=world.main)

    def on_epoch_end(metrics: dict[str, Any]) -> None:
        history.append(metrics)
        step["n"] += steps
        if not world.main:
            return
        lines = "".join(clean_json.dumps(m) + "\n" for m in history)  # a NaN loss is null + a note
        atomic_write_text(run / "metrics.jsonl", lines)
        done = metrics["epoch"] + 1
        if done % train.checkpoint_every == 0 or done == train.epochs or metrics.get("early_stopped"):
            epoch_file, _ = checkpoint_paths(run / "checkpoints", done)
            save_state(epoch_file, model=compiled.model, optimizer=compiled.optimizer, scheduler=compiled.scheduler,
                       point=RunPoint(epoch=done, step=step["n"], trainable_groups=metrics["trainable_groups"],
                                      history=history), recipe_yaml=recipe_yaml,
                       extra=identity | ({"scaler": scaler.state_dict()} if scaler is not None else {})
                       | ({"ema": ema.state_dict()} if ema is not None else {}))
            rotate_checkpoints(run / "checkpoints", keep_last=train.keep_last)
            if tracking is not None:  # only checkpointed epochs: a resume never trains a logged epoch again
                tracking.log_epochs(history)
        if selection.update(metrics):  # after the training state: see recipec.train.select
            select.save_best(run / "checkpoints", ema.state if selection.uses_ema else compiled.model.state_dict(),
                             selection)
        say(epoch_line(metrics, train.epochs))

    cache = head_cache(recipe, compiled, data.train, head_only_epochs(compiled.schedule, compiled.groups[-1].name,
                                                                      recipe.train.epochs),
                       distributed=world.distributed)
    if tracking is not None:  # MLflow is reached (its run made or resumed) before any compute is spent
        status("starting the trackers")
        tracking.start(compiled.plan, history)
    if progress is not None and world.main:
        progress.training(start, train.epochs, recipe.data.batch_size * world.size)
        status("filling the feature cache" if cache is not None and start in cache.epochs else f"epoch {start}")
    training = training_of(compiled, task_of_recipe(recipe), criterion=criterion, ema=ema, scaler=scaler, cache=cache,
                           mix=batch_mix(len(data.classes), recipe.data.mixup, recipe.data.cutmix))
    loop.fit(training=training, data=data, config=fit_config(recipe), start_epoch=start, history=list(history),
        world=world, on_epoch_end=on_epoch_end,
        on_batch=progress.on_batch if progress is not None and world.main else None)
    background.close()  # plan.png is whole before the exports and the card that shows it
    if not world.main:
        return run

    chosen, selected = select.export_state(recipe.export.weights, folder=run / "checkpoints", selection=selection,
                                           history=history, model=compiled.model, ema=ema)
    compiled.model.load_state_dict(chosen)  # training is over: the model is now what export.weights names
    provenance = provenance_of(recipe, compiled, data, history, selection=selected)
    provenance |= adapter_provenance(recipe, compiled.plan.data)
    for path in finish_adapters(recipe, compiled, run, provenance):  # PEFT files, then merged: a plain model
        say(f"wrote {path}")
    provenance |= threshold_provenance(recipe, compiled.model, data, compiled.device)  # multilabel.tune_thresholds
    status("exporting")
    for path in export_model(recipe, compiled.model, run, recipe_yaml, provenance):
        say(f"wrote {path}")
    quantized = quantize_run(recipe, run, data.classes)  # export.quantize: model.int8.onnx
    if quantized is not None:
        say(f"wrote {quantized}")
    plot_curves(history, run / "curves.png", selection=selected)  # unfreeze epochs and the exported one marked
    failed = None
    if evaluates_artifacts(recipe, data):
        status("evaluating the exported artifacts")
        failed = check_artifacts(recipe, run, say)
    status("writing the model card")
    say(f"wrote {write_card(run)}")
    if failed is not None:  # exit 1 once the card shows which artifact was rejected
        raise failed
    if tracking is not None:
        status("logging the run's files to the trackers")
        tracking.finish(history)
    return run
