"""The command line: parses arguments, calls the API, turns errors into text and exit codes.

No logic lives here. Imports are lazy so that ``recipec --help``, ``validate`` and
``schema`` never import torch.

Exit codes: 0 done; 2 the input is wrong (one ``error:`` line per problem on stderr, no
traceback unless ``--debug`` or ``RECIPEC_DEBUG=1``); 1 the run itself failed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from recipec import _json as clean_json
from recipec._terminal import escape
from recipec.errors import BuildInterrupted, RecipecError, RecipeError

if TYPE_CHECKING:
    from recipec.recipe.spec import Recipe

__all__ = ["cli", "main"]

_SET_HELP = "Override a recipe value: dotted.path=YAML value (repeatable), e.g. optimizer.lr=3e-4."
_TRUST_HELP = ("A custom factory (model.arch) that the file's own recipe may import and call to rebuild the "
               "model (repeatable, exact name); any other is refused. torchvision models need none.")


class _Located(Exception):
    """A RecipecError whose problems were given their recipe file locations."""

    def __init__(self, error: RecipecError, lines: list[str]) -> None:
        self.error = error
        self.lines = lines
        super().__init__("\n".join(lines))


def _locate(error: RecipecError, recipe: Recipe | None) -> _Located:
    from recipec.recipe.load import recipe_location

    lines = []
    for path, problem in zip(error.paths, error.problems):
        where = recipe_location(recipe, path) if recipe is not None and path is not None else None
        lines.append(f"{where}: {problem}" if where else problem)
    return _Located(error, lines)


class _Interrupted(Exception):
    """Ctrl-C during a build, with the lines that say what was kept and how to resume.

    Not a KeyboardInterrupt: click would turn that into a bare ``Abort`` and print a blank line.
    """

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def _resume_lines(exc: BuildInterrupted, args: list[str], out: str | None, run: str, smoke: bool) -> list[str]:
    """What Ctrl-C kept, and the exact command that continues: the user's recipe, --set and --device."""
    import shlex

    if smoke:
        return [f"a smoke run: nothing to resume ({exc.run})"]
    if os.path.abspath(run) != os.path.abspath(exc.run):  # a source.recipe upstream: the same command continues it
        kept = f"kept {exc.checkpoint}" if exc.checkpoint else "no checkpoint yet"
        command = shlex.join(["recipec", "build", args[0], *(["--out", out] if out else []), *args[1:]])
        return [f"interrupted while building the upstream run {exc.run} ({kept}); continue with:", f"  {command}"]
    command = shlex.join(["recipec", "build", args[0], "--out", exc.run, *args[1:]])
    if exc.checkpoint is None:
        return ["no checkpoint was written yet (the first epoch did not end): nothing to resume; start again with:",
                f"  {command}"]
    done = f" ({exc.epoch} epoch{'' if exc.epoch == 1 else 's'} done)" if exc.epoch is not None else ""
    return [f"kept {exc.checkpoint}{done}; continue with:", f"  {command} --resume"]


def _load(path: str, overrides: Sequence[str] = ()) -> Recipe:
    from recipec.recipe.load import load_recipe

    return load_recipe(path, overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks (also RECIPEC_DEBUG=1).")
@click.version_option(package_name="recipec", prog_name="recipec")
def cli(debug: bool) -> None:
    """recipec: declarative transfer-learning recipes for PyTorch, and a checkpoint converter.

    \b
    Examples:
      recipec build recipes/quickstart.yaml
      recipec validate recipes/*.yaml
      recipec plan recipes/quickstart.yaml --set optimizer.lr=3e-4
      recipec plan recipes/quickstart.yaml --json > plan.json
      recipec inspect runs/quickstart/model.safetensors
      recipec schema --out schemas/recipe.schema.json
    """


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing for valid recipes.")
def validate(recipes: tuple[str, ...], overrides: tuple[str, ...], quiet: bool) -> None:
    """Check recipes without building anything (torch is not imported).

    Every problem of every recipe is reported, each located as file:line:col.

    \b
    Examples:
      recipec validate recipes/quickstart.yaml
      recipec validate recipes/*.yaml --set seed=1
    """
    problems: list[str] = []
    for path in recipes:
        try:
            _load(path, overrides)
        except RecipecError as exc:
            problems.extend(exc.problems)
        else:
            if not quiet:
                click.echo(f"{path}: ok")
    if problems:
        raise _Located(RecipeError(problems), problems)


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write the schema here instead of stdout.")
def schema(out: str | None) -> None:
    """Print or write the JSON Schema of recipes (draft 2020-12).

    \b
    Editors (VS Code's YAML extension, JetBrains) validate and complete recipes that start with:
      # yaml-language-server: $schema=../schemas/recipe.schema.json
    """
    from recipec.recipe.schema import schema_text

    text = schema_text()
    if out is None:
        click.echo(text, nl=False)
        return
    from recipec._atomic import atomic_write_text

    atomic_write_text(out, text)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: runs/<name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--resume", is_flag=True, help="Continue the run from its newest intact checkpoint (last.pt or epoch-*.pt).")
@click.option("--device", help="Override the recipe's device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--nproc", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Data-parallel processes on this machine (gloo on CPU, NCCL on CUDA; at most 256); torchrun works too.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--smoke", is_flag=True,
              help="A smoke test: one epoch per phase of the freezing schedule (every set of trainable groups, each "
                   "at its own lr), a few training and validation batches each, then exports and card; into a new "
                   "temporary directory unless --out is given.")
@click.option("--smoke-batches", type=click.IntRange(min=1, max=10_000), default=2, show_default=True, metavar="N",
              help="Training and validation batches per epoch of a --smoke run.")
def build(recipe: str, out: str | None, overrides: tuple[str, ...], resume: bool, device: str | None, nproc: int,
          quiet: bool, smoke: bool, smoke_batches: int) -> None:
    """Compile a recipe, fine-tune, and export into a run directory.

    The run directory holds recipe.yaml (resolved), plan.json, metrics.jsonl (one line per
    epoch), checkpoints/last.pt (everything --resume needs), the exports named by
    export.formats (model.safetensors, model.pt) and curves.png. Ctrl-C leaves the last
    complete checkpoint and prints the command that resumes it (exit 130); --resume
    continues from it with the same result as an uninterrupted run.

    \b
    Examples:
      recipec build recipes/quickstart.yaml
      recipec build recipes/quickstart.yaml --smoke
      recipec build recipes/quickstart.yaml --set train.epochs=3 --set optimizer.lr=3e-4 --out runs/try
      recipec build recipes/quickstart.yaml --resume
    """
    resume_args = [recipe, *(a for o in overrides for a in ("--set", o)), *(["--device", device] if device else []),
                   *(["--nproc", str(nproc)] if nproc > 1 else [])]
    if device is not None:
        overrides = (*overrides, f"device={device}")
    spec = _load(recipe, overrides)  # a bad recipe is reported once, before any process starts
    if smoke and resume:
        raise click.BadParameter("a smoke run starts fresh; drop --resume", param_hint="--smoke")
    if smoke and out is None:
        import tempfile

        out = os.path.join(tempfile.mkdtemp(prefix="recipec-smoke-"), spec.name)
        if not quiet:
            click.echo(f"smoke run into {out} (a temporary directory; --out keeps it elsewhere)")
    if nproc > 1:
        if os.environ.get("WORLD_SIZE", "1") != "1":
            raise click.BadParameter("already running under torchrun; drop --nproc", param_hint="--nproc")
        from recipec.train.distributed import launch

        argv = ["build", recipe, *(["--out", out] if out else []), *(a for o in overrides for a in ("--set", o)),
                *(["--resume"] if resume else []), *(["--quiet"] if quiet else []),
                *(["--smoke", "--smoke-batches", str(smoke_batches)] if smoke else [])]
        code = launch(argv, nproc)
        if code:
            raise click.exceptions.Exit(code)
        return
    from recipec.progress import for_terminal

    progress = None if quiet else for_terminal()  # a status line and epoch bars on a terminal; plain lines otherwise
    try:
        from recipec.build import build as run_build

        run = run_build(spec, out=out, resume=resume, log=None if quiet else progress.log if progress else click.echo,
                        smoke=smoke_batches if smoke else None, progress=progress)
    except RecipecError as exc:
        raise _locate(exc, spec) from exc
    except BuildInterrupted as exc:
        from recipec.build import run_directory

        raise _Interrupted(_resume_lines(exc, resume_args, out, str(run_directory(spec, out)), smoke)) from exc
    finally:
        if progress is not None:
            progress.close()  # erase a bar or status before the error lines or the last one
    if not quiet and os.environ.get("RANK", "0") == "0":
        click.echo(f"done: {run}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--device", help="Override the recipe's device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole plan as JSON (the plan.json format).")
@click.option("--png", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also draw the plan as a PNG: per group, the epochs it trains (lr in colour, log scale) and is frozen.")
def plan(recipe: str, overrides: tuple[str, ...], device: str | None, as_json: bool, png: str | None) -> None:
    """Build the model and load weights, then show what was loaded and the fine-tuning schedule.

    Nothing is trained. The load report says the fate of every key (loaded, renamed,
    adapted, excluded, mismatched, missing, unexpected); the group table shows, per epoch,
    which layer groups train and at which learning rate.

    \b
    Examples:
      recipec plan recipes/quickstart.yaml
      recipec plan recipes/quickstart.yaml --set train.epochs=8 --set freeze.unfreeze.5=[layer2] --json
      recipec plan recipes/gradual-unfreezing.yaml --png plan.png
    """
    if device is not None:
        overrides = (*overrides, f"device={device}")
    spec = _load(recipe, overrides)
    if png is not None:  # refused before any compute: a directory, a device, the recipe itself
        from recipec._files import check_output

        check_output(png, inputs=[recipe], what="the plan picture")
    try:
        from recipec.build import plan_recipe, resolve_upstream
        from recipec.checks import check_inputs

        check_inputs(spec, scan_images=True)  # every missing path and data problem at once, before compiling
        compiled, planned = plan_recipe(resolve_upstream(spec, build_missing=False))
    except RecipecError as exc:
        raise _locate(exc, spec) from exc
    if png is not None:  # drawn first: a picture that cannot be written leaves no half-printed output
        from recipec.plan_png import plot_plan

        plot_plan(planned, png)
    if as_json:
        click.echo(clean_json.dumps(planned, indent=2))
    else:
        info = planned["data"]
        click.echo(escape(compiled.plan.text()))  # key names come from the source checkpoint
        from recipec.plan import data_lines

        click.echo(escape("\n".join(data_lines(info, planned["steps_per_epoch"]))))  # sizes and origins of the splits
        if png is not None:
            click.echo(f"wrote {png}")


@cli.command(name="lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
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

    \b
    Examples:
      recipec lr-find recipes/quickstart.yaml
      recipec lr-find recipes/quickstart.yaml --json --png lr-find.png
    """
    if start_lr >= end_lr:
        raise click.BadParameter(f"must be below --end-lr ({end_lr:g}), got {start_lr:g}", param_hint="--start-lr")
    if device is not None:
        overrides = (*overrides, f"device={device}")
    spec = _load(recipe, overrides)
    if png is not None:  # refused before any compute
        from recipec._files import check_output

        check_output(png, inputs=[recipe], what="the lr-find picture")
    try:
        from recipec.build import resolve_upstream
        from recipec.checks import check_inputs
        from recipec.lrfind import find_lr, format_lr_find, plot_lr_find

        check_inputs(spec)  # every missing path and data problem at once, before compiling
        result = find_lr(resolve_upstream(spec, build_missing=False), start_lr=start_lr, end_lr=end_lr, steps=steps,
                         method=method)
    except RecipecError as exc:
        raise _locate(exc, spec) from exc
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


@cli.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", type=click.Choice(["torch", "safetensors", "onnx"]), help="Output format (default: DST's suffix).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), help="Cast floating tensors.")
@click.option("--recipe", type=click.Path(dir_okay=False),
              help="The recipe that describes the architecture, for files that carry none (needed for ONNX).")
@click.option("--shard-size", metavar="SIZE", help="Shard safetensors output above SIZE (e.g. 2GB).")
@click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
              help="A pickle global you trust in a torch source (repeatable).")
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY",
              help=_TRUST_HELP)
def convert(src: str, dst: str, to: str | None, dtype: str | None, recipe: str | None, shard_size: str | None,
            allow_globals: tuple[str, ...], trust_factories: tuple[str, ...]) -> None:
    """Convert a checkpoint between torch, safetensors and ONNX.

    The recipe and provenance a recipec export carries travel into the output. ONNX needs
    the architecture: from the checkpoint's own metadata or from --recipe; the graph is
    checked against torch with onnxruntime before it is written (exit 1 beyond tolerance).

    \b
    Examples:
      recipec convert runs/quickstart/model.safetensors model.onnx
      recipec convert runs/quickstart/checkpoints/last.pt model.safetensors --dtype bfloat16
      recipec convert backbone.pth backbone.safetensors --shard-size 2GB
      recipec convert foreign.pth model.onnx --recipe recipes/quickstart.yaml
    """
    from recipec.convert import convert as run_convert

    for path in run_convert(src, dst, to=to, dtype=dtype, recipe=recipe, shard_size=shard_size,
                            allow_globals=allow_globals, trust_factories=trust_factories):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, every tensor included.")
@click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
              help="A pickle global you trust in a torch file (repeatable); nothing else is unpickled.")
def inspect(checkpoint: str, as_json: bool, allow_globals: tuple[str, ...]) -> None:
    """Show the tensors, shapes, dtypes, sizes and metadata of a checkpoint.

    Reads torch files (weights only, never arbitrary pickles), safetensors files and sharded
    safetensors (*.index.json) without building any model.

    \b
    Examples:
      recipec inspect runs/quickstart/model.safetensors
      recipec inspect runs/quickstart/checkpoints/last.pt --json
    """
    from recipec.weights.inspect import format_inspect, inspect_checkpoint

    report = inspect_checkpoint(checkpoint, allow_globals=allow_globals)
    click.echo(clean_json.dumps(report, indent=2) if as_json else format_inspect(report))


@cli.command(name="eval")
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
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY", help=_TRUST_HELP)
def eval_(target: str, split: str | None, data: str | None, as_json: bool, out: str | None, device: str | None,
          batch_size: int | None, trust_factories: tuple[str, ...]) -> None:
    """Evaluate a run's exported model on a held-out split: loss, accuracy, per-class report, confusion matrix.

    TARGET is a run directory (its model.safetensors, else model.pt) or an export file. The
    results go to RUN/eval/<split>.json with RUN/eval/<split>-confusion.png, and the run's
    card (README.md) is re-rendered with them. Precision of a class never predicted is 0.

    \b
    Examples:
      recipec eval runs/quickstart --split val
      recipec eval runs/quickstart/model.safetensors --split val --json
    """
    from recipec.evaluate import evaluate

    results, written = evaluate(target, split=split, data=data, batch_size=batch_size, device=device,
                                trust_factories=trust_factories, out=out)
    if split is None and data is None and results["split"] == "val":
        click.echo("note: the run's data has no test split: evaluated val (the split the run validated on)", err=True)
    if as_json:
        click.echo(clean_json.dumps(results, indent=2, ensure_ascii=False))
    else:
        from recipec.evaluate import format_results

        click.echo(escape(format_results(results)))  # class names come from files
    for path in written:
        click.echo(f"wrote {escape(str(path), newlines=False)}", err=as_json)


@cli.command()
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
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY", help=_TRUST_HELP)
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
    from recipec.predict import format_predictions, image_paths, predict_images
    from recipec.usage import load_predictor

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
        _print_errors([*failed, f"{len(failed)} of {len(results)} images could not be read; the others were predicted"])
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("target", type=click.Path())
@click.option("--layers", required=True, metavar="NAME,...", help="Dotted module names, comma-separated (e.g. layer3,layer4).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
              help="Which part of the recipe's dataset.")
@click.option("--pool", type=click.Choice(["avg", "max"]), default="avg", show_default=True,
              help="How spatial (or token) outputs are pooled to one vector per example.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP + " Recipes only.")
@click.option("--device", help="Device to run the model on (default: the recipe's).")
@click.option("--batch-size", type=click.IntRange(min=1, max=65_536), help="Override data.batch_size (at most 65,536, as there).")
@click.option("--trust-factory", "trust_factories", multiple=True, metavar="PKG.MODULE:FACTORY",
              help=_TRUST_HELP)
def features(target: str, layers: str, out: str, split: str, pool: str, overrides: tuple[str, ...],
             device: str | None, batch_size: int | None, trust_factories: tuple[str, ...]) -> None:
    """Extract pooled features of intermediate layers over a dataset into safetensors.

    TARGET is a recipe (the model is compiled with its weights and source) or a recipec
    export (the model and the dataset come from its embedded recipe). Augmentations are
    off and the order is the dataset's, so the file is deterministic: one (N, C) tensor per
    layer and `labels` (N,).

    \b
    Examples:
      recipec features runs/quickstart/model.safetensors --layers layer3,layer4 --out feats.safetensors
      recipec features recipes/quickstart.yaml --layers avgpool --split val --out val.safetensors
    """
    from recipec.train.features import features as extract

    names = [name.strip() for name in layers.split(",") if name.strip()]
    path = extract(target, layers=names, out=out, split=split, overrides=overrides, device=device,
                   batch_size=batch_size, pool=pool, trust_factories=trust_factories)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--template", type=click.Path(dir_okay=False), help="A Jinja2 template (default: the recipe's card.template, else the shipped one).")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write (default: RUN_DIR/README.md).")
def card(run_dir: str, template: str | None, out: str | None) -> None:
    """(Re)render the model card of a finished run from its files alone.

    The card has Hugging Face front matter (license, tags, base_model, datasets, metrics)
    and the sections of Mitchell et al.; what is unknown is left out, never filled with
    placeholders.

    \b
    Examples:
      recipec card runs/quickstart
      recipec card runs/quickstart --template my-card.md.j2 --out CARD.md
    """
    from recipec.card.render import write_card

    click.echo(f"wrote {write_card(run_dir, template=template, out=out)}")


def _print_errors(lines: Sequence[str]) -> None:
    if os.environ.get("RECIPEC_QUIET_RANK") == "1":  # ranks > 0 of --nproc: rank 0 reports
        return
    for line in lines:
        click.echo(f"error: {escape(line, newlines=False)}", err=True)  # keys quoted from files


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RECIPEC_DEBUG", "") not in ("", "0")
    code = 0
    previous = _catch_interrupts()
    try:
        result: Any = cli.main(args=args, prog_name="recipec", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except _Located as exc:
        if debug:
            raise exc.error from exc
        _print_errors(exc.lines)
        code = exc.error.exit_code
    except RecipecError as exc:
        if debug:
            raise
        _print_errors(exc.problems)
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:
        _print_errors([exc.format_message()])
        command = exc.ctx.command_path if exc.ctx is not None else "recipec"
        click.echo(f"Try '{command} --help' for help.", err=True)
        code = 2
    except click.ClickException as exc:
        _print_errors([exc.format_message()])
        code = exc.exit_code
    except OSError as exc:  # the file system refused (permissions, a full disk): not a bug, not the recipe
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {escape(f'{where}{exc.strerror or exc}', newlines=False)}", err=True)
        # a path the user gave that cannot be used is bad input; a full disk or an I/O fault is a failed run
        code = 2 if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                                     FileExistsError)) else 1
    except (KeyboardInterrupt, click.Abort, _Interrupted) as exc:
        if os.environ.get("RECIPEC_QUIET_RANK") != "1":  # under --nproc, rank 0 says it once
            click.echo("error: interrupted", err=True)
            for line in getattr(exc, "lines", []):
                click.echo(line, err=True)
        code = 130
    except Exception as exc:  # a bug in recipec, not the user's input
        if debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {escape(str(exc), newlines=False)} (rerun with "
                   "--debug for the traceback, and please report it)", err=True)
        code = 1
    if previous is not None and code != 130:  # after Ctrl-C the handler stays for the interpreter's shutdown
        signal.signal(signal.SIGINT, previous)
    sys.exit(code)


_MAIN_PID = [0]


def _catch_interrupts() -> Any:
    """Make a second Ctrl-C, during the shutdown the first one started, end the process at once and quietly.

    Returns the handler it replaced (None when it left Python's default alone: not the main thread,
    or someone else's handler is installed).
    """
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    _MAIN_PID[0] = os.getpid()
    return signal.signal(signal.SIGINT, _first_interrupt)


def _first_interrupt(signum: int, frame: Any) -> None:
    if os.getpid() == _MAIN_PID[0]:  # not in forked data-loader workers: they stop on their own
        signal.signal(signal.SIGINT, _second_interrupt)
    raise KeyboardInterrupt


def _second_interrupt(signum: int, frame: Any) -> None:
    if os.getpid() != _MAIN_PID[0]:
        raise KeyboardInterrupt
    # files are written atomically: stopping here leaves every finished file whole (no traceback, no cleanup)
    os.write(2, b"error: interrupted again: stopped at once; the last complete checkpoint is intact\n")
    os._exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
