"""The command line: parses arguments, calls the API, turns errors into text and exit codes.

No logic lives here. This module holds the click group, ``main`` and the mapping of errors
to text and exit codes; the commands are in :mod:`recipec.commands`, by theme. Imports are
lazy so that ``recipec --help``, ``validate`` and ``schema`` never import torch.

Exit codes: 0 done; 2 the input is wrong (one ``error:`` line per problem on stderr, no
traceback unless ``--debug`` or ``RECIPEC_DEBUG=1``); 1 the run itself failed. Under
``torchrun``, ranks above 0 print no input error (rank 0 prints it) and prefix the others
with ``[rank N] `` (see :func:`recipec.commands._common.rank_prefix`).

Warnings go to stderr as ``warning: <text>`` whatever ``--quiet`` says (it silences progress);
a library's warning is shown in the same form, without its path into site-packages
(:func:`recipec.commands._common.show_warning`).
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click

from recipec.commands import checkpoints, hub, models, presets, recipes, sweep
from recipec.commands._common import Interrupted, Located, print_errors, rank_prefix, show_warning
from recipec.errors import RecipecError, RecipecWarning

__all__ = ["cli", "main"]


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


for _command in (recipes.validate, recipes.schema, recipes.init, recipes.build, recipes.plan, models.lr_find,
                 checkpoints.convert, checkpoints.inspect, models.eval_, models.predict, checkpoints.features,
                 checkpoints.card, hub.push, presets.presets, sweep.sweep):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RECIPEC_DEBUG", "") not in ("", "0")
    code = 0
    previous = _catch_interrupts()
    warned = warnings.catch_warnings()  # the caller's filters and showwarning come back at the end
    warned.__enter__()
    warnings.showwarning = show_warning  # stderr, in recipec's words; survives --quiet
    warnings.simplefilter("always", RecipecWarning)  # each time it happens, not once per line of recipec
    try:
        result: Any = cli.main(args=args, prog_name="recipec", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except Located as exc:
        if debug:
            raise exc.error from exc
        code = exc.error.exit_code
        print_errors(exc.lines, code)
    except RecipecError as exc:
        if debug:
            raise
        code = exc.exit_code
        print_errors(exc.problems, code)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:
        code = 2
        print_errors([exc.format_message()], code)
        if rank_prefix(code) is not None:
            command = exc.ctx.command_path if exc.ctx is not None else "recipec"
            click.echo(f"Try '{command} --help' for help.", err=True)
    except click.ClickException as exc:
        code = exc.exit_code
        print_errors([exc.format_message()], code)
    except OSError as exc:  # the file system refused (permissions, a full disk): not a bug, not the recipe
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        # a path the user gave that cannot be used is bad input; a full disk or an I/O fault is a failed run
        code = 2 if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                                     FileExistsError)) else 1
        print_errors([f"{where}{exc.strerror or exc}"], code, unexpected=True)
    except (KeyboardInterrupt, click.Abort, Interrupted) as exc:
        code = 130
        prefix = rank_prefix(code)  # under --nproc, rank 0 says it once
        if prefix is not None:
            click.echo(f"{prefix}error: interrupted", err=True)
            for line in getattr(exc, "lines", []):
                click.echo(f"{prefix}{line}", err=True)
    except Exception as exc:  # a bug in recipec, not the user's input
        if debug:
            raise
        code = 1
        print_errors([f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback, and "
                      "please report it)"], code, unexpected=True)
    warned.__exit__(None, None, None)
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
