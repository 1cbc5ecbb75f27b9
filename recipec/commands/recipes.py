"""Commands on a recipe and the run it makes: validate, schema, build, plan."""

from __future__ import annotations

import os

import click

from recipec import _json as clean_json
from recipec._terminal import escape
from recipec.commands._common import SET_HELP, Interrupted, Located, load, locate
from recipec.errors import BuildInterrupted, RecipecError, RecipeError

__all__ = ["build", "plan", "schema", "validate"]


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


@click.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
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
            load(path, overrides)
        except RecipecError as exc:
            problems.extend(exc.problems)
        else:
            if not quiet:
                click.echo(f"{path}: ok")
    if problems:
        raise Located(RecipeError(problems), problems)


@click.command()
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


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: runs/<name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
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
    spec = load(recipe, overrides)  # a bad recipe is reported once, before any process starts
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
        from recipec.pipeline.build import build as run_build

        run = run_build(spec, out=out, resume=resume, log=None if quiet else progress.log if progress else click.echo,
                        smoke=smoke_batches if smoke else None, progress=progress)
    except RecipecError as exc:
        raise locate(exc, spec) from exc
    except BuildInterrupted as exc:
        from recipec.pipeline.runs import run_directory

        raise Interrupted(_resume_lines(exc, resume_args, out, str(run_directory(spec, out)), smoke)) from exc
    finally:
        if progress is not None:
            progress.close()  # erase a bar or status before the error lines or the last one
    if not quiet and os.environ.get("RANK", "0") == "0":
        click.echo(f"done: {run}")


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
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
    spec = load(recipe, overrides)
    if png is not None:  # refused before any compute: a directory, a device, the recipe itself
        from recipec._files import check_output

        check_output(png, inputs=[recipe], what="the plan picture")
    try:
        from recipec.pipeline.planning import plan_recipe
        from recipec.pipeline.upstream import resolve_upstream
        from recipec.pipeline.checks import check_inputs

        check_inputs(spec, scan_images=True)  # every missing path and data problem at once, before compiling
        compiled, planned = plan_recipe(resolve_upstream(spec, build_missing=False))
    except RecipecError as exc:
        raise locate(exc, spec) from exc
    if png is not None:  # drawn first: a picture that cannot be written leaves no half-printed output
        from recipec.compiler.plan_picture import plot_plan

        plot_plan(planned, png)
    if as_json:
        click.echo(clean_json.dumps(planned, indent=2))
    else:
        info = planned["data"]
        click.echo(escape(compiled.plan.text()))  # key names come from the source checkpoint
        from recipec.compiler.plan import data_lines

        click.echo(escape("\n".join(data_lines(info, planned["steps_per_epoch"]))))  # sizes and origins of the splits
        if png is not None:
            click.echo(f"wrote {png}")
