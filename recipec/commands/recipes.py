"""Commands on a recipe and the run it makes: validate, schema, init, build, plan."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from recipec import _json as clean_json
from recipec._terminal import escape
from recipec.commands._common import SET_HELP, Interrupted, Located, load, locate
from recipec.errors import BuildInterrupted, RecipecError, RecipeError

if TYPE_CHECKING:
    from recipec.recipe.spec import Recipe

__all__ = ["build", "init", "plan", "schema", "validate"]


def _resume_lines(exc: BuildInterrupted, args: list[str], out: str | None, run: str, smoke: bool) -> list[str]:
    """What Ctrl-C kept, and the exact command that continues: the user's recipe, --set and --device."""
    import shlex

    if smoke:
        return ["a smoke run: nothing to resume" + ("" if out else " (its temporary directory is removed)")]
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

    Every problem of every recipe is reported, each located as file:line:col: the
    schema's, an architecture no model family knows (with the nearest names), and a
    path that is not there (data.root, source.checkpoint, source.recipe, card.template).

    \b
    Examples:
      recipec validate recipes/quickstart.yaml
      recipec validate recipes/*.yaml --set seed=1
    """
    from recipec.recipe.checks import recipe_problems

    problems: list[str] = []
    for path in recipes:
        try:
            spec = load(path, overrides)
        except RecipecError as exc:
            problems.extend(exc.problems)
            continue
        found = recipe_problems(spec)
        if found:
            problems.extend(locate(RecipeError(found), spec).lines)
        elif not quiet:
            click.echo(f"{path}: ok")
    if problems:
        raise Located(RecipeError(problems), problems)


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write the schema here instead of stdout.")
@click.option("--path", "show_path", is_flag=True,
              help="Print where the installed copy of the schema is (for an editor's schema settings).")
def schema(out: str | None, show_path: bool) -> None:
    """Print or write the JSON Schema of recipes (draft 2020-12).

    Editors (VS Code's YAML extension, JetBrains) validate and complete recipes that name the
    schema in their first line (JSON recipes: a "$schema" key, which recipec ignores):

    \b
      # yaml-language-server: $schema=../schemas/recipe.schema.json

    For recipes anywhere, map them to the installed copy (--path) in the editor's settings,
    e.g. VS Code's "yaml.schemas": {"<that path>": ["*.recipe.yaml", "recipes/*.yaml"]}.

    \b
    Examples:
      recipec schema --out schemas/recipe.schema.json
      recipec schema --path
    """
    from recipec.recipe.schema import SCHEMA_FILE, schema_text

    if show_path:
        if not SCHEMA_FILE.is_file():
            from recipec.errors import RunError

            raise RunError(f"the installed schema is missing ({SCHEMA_FILE}): reinstall recipec, or write the "
                           "schema where you want it with `recipec schema --out FILE`")
        click.echo(str(SCHEMA_FILE))
        return
    text = schema_text()
    if out is None:
        click.echo(text, nl=False)
        return
    from recipec._atomic import atomic_write_text

    atomic_write_text(out, text)


@click.command()
@click.argument("data", required=False, type=click.Path())
@click.option("--arch", default="resnet18", show_default=True,
              help="model.arch: a torchvision classification model (resnet50, vit_b_16, ...) or timm/<name>.")
@click.option("--out", default="recipe.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The recipe file to write (YAML).")
@click.option("--force", is_flag=True, help="Replace --out when it exists.")
def init(data: str | None, arch: str, out: str, force: bool) -> None:
    """Write a commented recipe for DATA that validates and plans (torch is not imported).

    DATA is a folder of class folders (DATA/<class>/<image>), of split folders
    (DATA/train/<class>/<image>, with val/ and test/), or a manifest file (.csv with
    path,label[,split], or .jsonl); without it, the recipe trains on the 8x8 digits
    scikit-learn ships. The classes come from the folder names or the training rows; the
    model starts from the architecture's pretrained weights (model.weights: DEFAULT), trains
    its new head alone for two epochs, then unfreezes one layer group from the top every two
    epochs, each at a smaller learning rate. An existing --out is kept unless --force.

    \b
    Examples:
      recipec init
      recipec init data/pets --out pets.yaml
      recipec init data/pets --arch timm/convnext_atto --out pets-convnext.yaml
    """
    import shlex

    from recipec.pipeline.init import init_recipe

    command = shlex.join(["recipec", "init", *([data] if data else []), *(["--arch", arch] if arch != "resnet18" else [])])
    layout = init_recipe(data, arch=arch, out=out, force=force, command=command)
    named = ", ".join(layout.classes[:5]) + (", ..." if len(layout.classes) > 5 else "")
    click.echo(escape(f"wrote {out}: {arch}, {len(layout.classes)} classes ({named}) from {layout.layout}",
                      newlines=False))
    click.echo(escape(f"next: recipec plan {shlex.quote(out)}   (pretrained weights come from the local cache: "
                      "RECIPEC_ALLOW_DOWNLOAD=1 fetches them once)", newlines=False))


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: runs/<name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Continue the run from its newest intact checkpoint (last.pt or epoch-*.pt).")
@click.option("--overwrite", is_flag=True,
              help="Start the run over: remove what an earlier build wrote into the run directory (only a directory "
                   "recipec made, only its files), once the inputs are checked.")
@click.option("--device", help="Override the recipe's device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--nproc", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Data-parallel processes on this machine (gloo on CPU, NCCL on CUDA; at most 256); torchrun works too.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--smoke", is_flag=True,
              help="A smoke test: one epoch per phase of the freezing schedule (every set of trainable groups, each "
                   "at its own lr), a few training and validation batches each, then exports and card; into a new "
                   "temporary directory, removed at the end (pass or fail), unless --out is given.")
@click.option("--smoke-batches", type=click.IntRange(min=1, max=10_000), default=2, show_default=True, metavar="N",
              help="Training and validation batches per epoch of a --smoke run.")
def build(recipe: str, out: str | None, overrides: tuple[str, ...], resume: bool, overwrite: bool, device: str | None,
          nproc: int, quiet: bool, smoke: bool, smoke_batches: int) -> None:
    """Compile a recipe, fine-tune, and export into a run directory.

    The run directory holds recipe.yaml (resolved), plan.json, metrics.jsonl (one line per
    epoch), checkpoints/last.pt (everything --resume needs), the exports named by
    export.formats (model.safetensors, model.pt) and curves.png. Ctrl-C leaves the last
    complete checkpoint and prints the command that resumes it (exit 130); --resume
    continues from it with the same result as an uninterrupted run; --overwrite starts it over.

    \b
    Examples:
      recipec build recipes/quickstart.yaml
      recipec build recipes/quickstart.yaml --smoke
      recipec build recipes/quickstart.yaml --set train.epochs=3 --set optimizer.lr=3e-4 --out runs/try
      recipec build recipes/quickstart.yaml --resume
      recipec build recipes/quickstart.yaml --overwrite
    """
    resume_args = [recipe, *(a for o in overrides for a in ("--set", o)), *(["--device", device] if device else []),
                   *(["--nproc", str(nproc)] if nproc > 1 else [])]
    if device is not None:
        overrides = (*overrides, f"device={device}")
    spec = load(recipe, overrides)  # a bad recipe is reported once, before any process starts
    if smoke and resume:
        raise click.BadParameter("a smoke run starts fresh; drop --resume", param_hint="--smoke")
    if resume and overwrite:
        raise click.BadParameter("--resume continues the run, --overwrite starts it over: choose one",
                                 param_hint="--overwrite")
    scratch = None  # the temporary directory of a --smoke run without --out: removed however the build ends
    if smoke and out is None:
        import tempfile

        scratch = tempfile.mkdtemp(prefix="recipec-smoke-")
        out = os.path.join(scratch, spec.name)
        if not quiet:
            click.echo(f"smoke run into {out} (a temporary directory, removed at the end; --out keeps the run)")
    try:
        _build(spec, recipe, resume_args, out, overrides, resume=resume, overwrite=overwrite, nproc=nproc, quiet=quiet,
               smoke_batches=smoke_batches if smoke else None, scratch=scratch is not None)
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


def _build(spec: Recipe, recipe: str, resume_args: list[str], out: str | None, overrides: tuple[str, ...], *,
           resume: bool, overwrite: bool, nproc: int, quiet: bool, smoke_batches: int | None, scratch: bool) -> None:
    """The build itself (in this process, or ``--nproc`` processes through torchrun)."""
    smoke = smoke_batches is not None
    if nproc > 1:
        if os.environ.get("WORLD_SIZE", "1") != "1":
            raise click.BadParameter("already running under torchrun; drop --nproc", param_hint="--nproc")
        from recipec.train.distributed import launch

        argv = ["build", recipe, *(["--out", out] if out else []), *(a for o in overrides for a in ("--set", o)),
                *(["--resume"] if resume else []), *(["--overwrite"] if overwrite else []),
                *(["--quiet"] if quiet else []), *(["--smoke", "--smoke-batches", str(smoke_batches)] if smoke else [])]
        code = launch(argv, nproc)
        if code:
            raise click.exceptions.Exit(code)
        return
    from recipec.progress import for_terminal

    progress = None if quiet else for_terminal()  # a status line and epoch bars on a terminal; plain lines otherwise
    try:
        from recipec.pipeline.build import build as run_build

        run = run_build(spec, out=out, resume=resume, overwrite=overwrite,
                        log=None if quiet else progress.log if progress else click.echo, smoke=smoke_batches,
                        progress=progress)
    except RecipecError as exc:
        raise locate(exc, spec) from exc
    except BuildInterrupted as exc:
        from recipec.pipeline.runs import run_directory

        raise Interrupted(_resume_lines(exc, resume_args, None if scratch else out, str(run_directory(spec, out)),
                                        smoke)) from exc
    finally:
        if progress is not None:
            progress.close()  # erase a bar or status before the error lines or the last one
    if not quiet and os.environ.get("RANK", "0") == "0":
        click.echo("done: the smoke run passed (its temporary directory is removed)" if scratch else f"done: {run}")


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
