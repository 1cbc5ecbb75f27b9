"""recipec sweep: an Optuna study over a recipe (see :mod:`recipec.pipeline.sweep`)."""

from __future__ import annotations

import click

from recipec.commands._common import SET_HELP, Interrupted, load, locate
from recipec.errors import BuildInterrupted, RecipecError

__all__ = ["sweep"]


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--space", required=True, type=click.Path(dir_okay=False), metavar="SPACE.yaml",
              help="Recipe paths (as --set takes them) -> distributions: {uniform|loguniform|int: [low, high]} "
                   "or {choice: [value, ...]}.")
@click.option("--trials", required=True, type=click.IntRange(min=1, max=100_000), metavar="N",
              help="Trials in the study, all processes and earlier runs counted: running again continues to N.")
@click.option("--out", type=click.Path(file_okay=False), help="Sweep directory (default: sweeps/<name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--storage", metavar="URL",
              help="Where the study lives: an Optuna RDB URL (sqlite:///..., postgresql://...) or journal:PATH "
                   "(a journal file on a shared filesystem); processes with the same URL share the study. "
                   "Default: sqlite:///DIR/study.db.")
@click.option("--study", "study_name", metavar="NAME", help="Study name in the storage (default: the recipe's name).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Start no trial after S seconds (the running one finishes).")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median", show_default=True,
              help="Stops hopeless trials on their epochs' train.select values (median: after 2 finished trials).")
@click.option("--nproc", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Data-parallel processes per trial (its epochs reach the pruner only when it ends).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def sweep(recipe: str, space: str, trials: int, out: str | None, overrides: tuple[str, ...], storage: str | None,
          study_name: str | None, timeout: float | None, pruner: str, nproc: int, quiet: bool) -> int:
    """Search recipe values with Optuna: every trial a validated, planned run in DIR/trials/NNNN/.

    The objective is the recipe's train.select metric, reported each epoch to the pruner. A
    combination the recipe schema refuses is a failed trial (with the reason) and trains nothing.
    DIR gets summary.csv, best.yaml (build it with recipec build) and sweep.png. Running the same
    command again continues the study; a trial a killed sweep left running is run again.

    \b
    Examples:
      recipec sweep recipes/quickstart.yaml --space space.yaml --trials 20
      recipec sweep recipes/quickstart.yaml --space space.yaml --trials 20 --storage journal:/shared/study.log
    """
    from pathlib import Path

    from recipec.pipeline.sweep import SweepConfig
    from recipec.pipeline.sweep import sweep as run_sweep
    from recipec.pipeline.sweep_results import write_results

    spec = load(recipe, overrides)  # a bad recipe is reported before the space and the storage
    where = Path(out) if out else Path("sweeps") / spec.name
    config = SweepConfig(recipe, space, trials, where, tuple(overrides), storage=storage, study=study_name,
                         timeout=timeout, pruner=pruner, nproc=nproc)
    try:
        study = run_sweep(config, log=None if quiet else click.echo)
        results = write_results(study, config, spec.train.select.metric)
    except RecipecError as exc:
        raise locate(exc, spec) from exc
    except (BuildInterrupted, KeyboardInterrupt) as exc:
        raise Interrupted([f"the study is kept in {where}; continue it with the same command (the interrupted "
                           "trial runs again)"]) from exc
    if not quiet:
        for path in results["files"]:
            click.echo(f"wrote {path}")
    if results["best"] is None:
        click.echo("error: no trial completed: nothing to choose (see summary.csv for the reasons)", err=True)
        return 1
    if not quiet:
        click.echo(f"best: trial {results['best']}, {spec.train.select.metric} {results['objective']:.4f}  "
                   f"(recipec build {where / 'best.yaml'})")
    return 0
