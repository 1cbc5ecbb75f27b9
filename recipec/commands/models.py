"""Commands that run a model on data and report what it does: eval, predict, lr-find."""

from __future__ import annotations

import sys

import click

from recipec import _json as clean_json
from recipec._terminal import escape
from recipec.commands._common import SET_HELP, TRUST_HELP, load, locate, print_errors
from recipec.errors import ExportError, RecipecError

__all__ = ["eval_", "lr_find", "predict"]


@click.command(name="eval")
@click.argument("target", type=click.Path())
@click.option("--split", type=click.Choice(["test", "val"]),
              help="Which held-out split (default: test when the run has one, else val).")
@click.option("--data", type=click.Path(), metavar="DIR_OR_MANIFEST",
              help="Evaluate on another image folder (<class>/<image>) or manifest instead of the run's split.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object (as eval/<split>.json).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Also write the JSON here (and <stem>-confusion.png beside it); needed to keep results of an "
                   "export outside a run directory.")
@click.option("--device", help="cpu (default), cuda, cuda:N or mps.")
@click.option("--batch-size", type=click.IntRange(min=1, max=65_536), help="Override data.batch_size.")
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY", help=TRUST_HELP)
@click.option("--artifacts", is_flag=True, help="Evaluate every exported artifact of the run (safetensors, torch, "
                                                "ONNX, int8 ONNX, pt2) on its selection split: RUN/eval/artifacts.json.")
def eval_(target: str, split: str | None, data: str | None, as_json: bool, out: str | None, device: str | None,
          batch_size: int | None, trust_factories: tuple[str, ...], artifacts: bool) -> None:
    """Evaluate a run's exported model on a held-out split: loss, accuracy, per-class report, confusion matrix.

    TARGET is a run directory (its model.safetensors, else model.pt) or an export file. The
    results go to RUN/eval/<split>.json with RUN/eval/<split>-confusion.png, and the run's
    card (README.md) is re-rendered with them. Precision of a class never predicted is 0.

    \b
    Examples:
      recipec eval runs/quickstart --split val
      recipec eval runs/quickstart/model.safetensors --split val --json
      recipec eval runs/quickstart --artifacts
    """
    if artifacts:
        _eval_artifacts(target, as_json=as_json, trust_factories=trust_factories,
                        others={"--split": split, "--data": data, "--out": out, "--device": device,
                                "--batch-size": batch_size})
        return
    from recipec.pipeline.evaluate import evaluate

    results, written = evaluate(target, split=split, data=data, batch_size=batch_size, device=device,
                                trust_factories=trust_factories, out=out)
    if split is None and data is None and results["split"] == "val":
        click.echo("note: the run's data has no test split: evaluated val (the split the run validated on)", err=True)
    if as_json:
        click.echo(clean_json.dumps(results, indent=2, ensure_ascii=False))
    else:
        from recipec.pipeline.evaluate import format_results

        click.echo(escape(format_results(results)))  # class names come from files
    for path in written:
        click.echo(f"wrote {escape(str(path), newlines=False)}", err=as_json)


def _eval_artifacts(target: str, *, as_json: bool, trust_factories: tuple[str, ...], others: dict[str, object]) -> None:
    given = [flag for flag, value in others.items() if value is not None]
    if given:
        raise click.UsageError(f"--artifacts evaluates every artifact on the run's selection split, on the CPU; "
                               f"leave out {', '.join(given)}")
    from recipec.card.render import write_card
    from recipec.pipeline.artifacts import evaluate_artifacts, format_artifacts

    try:
        results = evaluate_artifacts(target, trust_factories=trust_factories)
    except ExportError:  # an artifact over export.max_accuracy_drop: the card shows it rejected, then exit 1
        write_card(target)
        raise
    click.echo(clean_json.dumps(results, indent=2) if as_json else escape(format_artifacts(results)))
    click.echo(f"wrote {escape(str(write_card(target)), newlines=False)}", err=as_json)


@click.command()
@click.argument("export", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1, max=1000), default=5, show_default=True,
              help="Classes per image, highest probability first.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table", show_default=True,
              help="table: aligned text; csv: path,class,score (top-1); jsonl: {path, top: [{class, score}]} per image.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the predictions here (atomically) instead of stdout.")
@click.option("--batch-size", type=click.IntRange(min=1, max=65_536), default=32, show_default=True,
              help="Images per forward pass.")
@click.option("--device", help="cpu (default), cuda, cuda:N or mps; an ONNX export runs on onnxruntime's CPU.")
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY", help=TRUST_HELP)
def predict(export: str, images: tuple[str, ...], top_k: int, fmt: str, out: str | None, batch_size: int,
            device: str | None, trust_factories: tuple[str, ...]) -> None:
    """Predict the classes of images with an export alone, preprocessed as in training.

    EXPORT is model.safetensors, model.pt or model.onnx (onnxruntime); the class names and the
    preprocessing (resize rule, size, channels, normalisation) come from its metadata.
    Directories are walked recursively for image files. An unreadable image is named on
    stderr and the rest are predicted; the exit code is then 1.

    \b
    Examples:
      recipec predict runs/quickstart/model.safetensors digits/ --top-k 3
      recipec predict runs/quickstart/model.safetensors digits/0.png digits/1.png --format jsonl --out p.jsonl
    """
    from recipec.inference.predict import format_predictions, image_paths, predict_images
    from recipec.inference.predictor import load_predictor

    paths = image_paths(images)
    target = None
    if out is not None:
        from recipec._files import check_output

        target = check_output(out, what="the predictions", inputs=[export, *paths])
    predictor = load_predictor(export, trust_factories=trust_factories, device=device)
    show = sys.stderr.isatty() and len(paths) > batch_size

    def progress(done: int, total: int) -> None:
        click.echo(f"\rpredicted {done:,}/{total:,} images", nl=done == total, err=True)

    results = list(predict_images(predictor, paths, top_k=top_k, batch_size=batch_size,
                                  progress=progress if show else None))
    text = format_predictions(results, fmt)
    if target is not None:
        from recipec._atomic import atomic_write_text

        atomic_write_text(target, text)
    else:
        click.echo(escape(text), nl=False)  # paths and class names come from files
    failed = [r.error for r in results if r.error is not None]
    if failed:
        print_errors([*failed, f"{len(failed)} of {len(results)} images could not be read; the others were predicted"],
                     code=1)
        raise click.exceptions.Exit(1)


@click.command(name="lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--device", help="Override the recipe's device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result as JSON: suggested_lr, lrs, losses (smoothed), raw_losses, group_lrs, method.")
@click.option("--png", type=click.Path(dir_okay=False), metavar="FILE",
              help="Draw the loss against the lr (log scale), the suggestion marked.")
@click.option("--start-lr", type=click.FloatRange(min=0, min_open=True, max=100), default=1e-7, show_default=True,
              help="The first optimizer.lr of the sweep.")
@click.option("--end-lr", type=click.FloatRange(min=0, min_open=True, max=1000), default=10.0, show_default=True,
              help="The last optimizer.lr of the sweep (fewer steps when the loss diverges first).")
@click.option("--steps", type=click.IntRange(min=3, max=100_000), default=100, show_default=True,
              help="Optimizer steps, the lr growing exponentially from --start-lr to --end-lr.")
@click.option("--method", type=click.Choice(["steepest", "valley", "minimum"]), default="steepest",
              show_default=True, help="How the suggestion is read from the smoothed curve: steepest descent "
                                      "(Lightning), fastai's valley, or a tenth of the lr at the minimum (fastai).")
def lr_find(recipe: str, overrides: tuple[str, ...], device: str | None, as_json: bool, png: str | None,
            start_lr: float, end_lr: float, steps: int, method: str) -> None:
    """Learning-rate range test on the recipe's epoch-0 trainable groups; suggests optimizer.lr.

    One optimizer step per lr, the lr growing exponentially; every group keeps its planned
    ratio to optimizer.lr (lr_decay, group_lr). Freezing, BatchNorm policy, augmentations
    (MixUp/CutMix too), the training loss, amp and the feature cache apply as in the build's
    epoch 0. The loss is smoothed (beta 0.98, bias-corrected) and the test stops once it
    passes 4x its minimum. Nothing is written (but --png) and no run directory is made.
    Progress: a status line on a terminal, else a line about every tenth of the steps (on
    stdout as a build's, on stderr with --json).

    \b
    Examples:
      recipec lr-find recipes/quickstart.yaml
      recipec lr-find recipes/quickstart.yaml --json --png lr-find.png
    """
    if start_lr >= end_lr:
        raise click.BadParameter(f"must be below --end-lr ({end_lr:g}), got {start_lr:g}", param_hint="--start-lr")
    if device is not None:
        overrides = (*overrides, f"device={device}")
    spec = load(recipe, overrides)
    if png is not None:  # refused before any compute
        from recipec._files import check_output

        check_output(png, inputs=[recipe], what="the lr-find picture")
    from recipec.progress import for_terminal

    progress = for_terminal()  # a status line on a terminal; plain lines otherwise (a CI log, a pipe)
    try:
        from recipec.pipeline.upstream import resolve_upstream
        from recipec.pipeline.checks import check_inputs
        from recipec.pipeline.lrfind import find_lr, format_lr_find, plot_lr_find

        check_inputs(spec)  # every missing path and data problem at once, before compiling
        result = find_lr(resolve_upstream(spec, build_missing=False), start_lr=start_lr, end_lr=end_lr, steps=steps,
                         method=method, log=progress.status if progress is not None else
                         lambda line: click.echo(line, err=as_json))  # --json: stdout holds the JSON alone
    except RecipecError as exc:
        raise locate(exc, spec) from exc
    finally:
        if progress is not None:
            progress.close()
    if png is not None:
        plot_lr_find(result, png)
    if as_json:
        click.echo(clean_json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_lr_find(result, recipe))
        if png is not None:
            click.echo(f"wrote {png}")
    if result.suggested_lr is None:
        from recipec.errors import RunError

        raise RunError("lr-find: no suggestion: the loss diverged before enough steps were taken; lower --start-lr "
                       "or raise --steps")
