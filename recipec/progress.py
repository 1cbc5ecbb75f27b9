"""What a build shows on a terminal: a status line per phase, a progress bar per epoch.

Only when stdout is a terminal (the CLI decides, see :func:`for_terminal`): a spinner with
the phase before training (loading the data, compiling the model and loading weights,
filling the feature cache) and after it (exporting, writing the card), and during each epoch
a bar with the batches done, the running loss, images per second and the time left. At the
end of the epoch the bar is erased and the usual one-line epoch summary printed in its
place, so the scrollback holds exactly the lines a non-terminal run prints.

The training loop hands every batch's loss as a device tensor (:meth:`Progress.on_batch`);
reading it (``.item()``) waits for the device, so it is read at most four times a second,
never once per batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Progress", "for_terminal"]

_READ_EVERY = 0.25  # seconds between two reads of the loss (each one a host-device sync)


def for_terminal(stream: IO[str] | None = None) -> Progress | None:
    """A :class:`Progress` on ``stream`` (stdout) when it is a terminal; None otherwise (CI, files, pipes)."""
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    return Progress(stream) if isatty is not None and isatty() else None


class Progress:
    """The live part of a build's output on a terminal: one phase status or one epoch bar at a time.

    Args:
        stream: the terminal (stdout).
        echo: prints one finished line (default: writes it to ``stream``).

    Example:
        >>> progress = for_terminal()
        >>> build(recipe, log=progress.log if progress else print, progress=progress)  # doctest: +SKIP
    """

    def __init__(self, stream: IO[str], echo: Callable[[str], None] | None = None) -> None:
        from rich.console import Console  # noqa: PLC0415 (rich: only when a terminal shows progress)

        # force_terminal: the caller checked it is one; no markup or highlighting of text that came from files
        self._console = Console(file=stream, force_terminal=True, highlight=False, markup=False, emoji=False)
        self._stream = stream
        self._echo = echo or self._write
        self._live: Any = None  # the rich Progress shown now (a status or an epoch bar), or None
        self._task: Any = None
        self._epoch, self._epochs, self._images = 0, 0, 1
        self._started = 0.0
        self._read_at = 0.0
        self._loss: float | None = None

    # ---------------------------------------------------------------- phases

    def status(self, text: str) -> None:
        """Show ``text`` as the current phase (a spinner line) until the next status, bar or line."""
        from rich.progress import Progress as Live, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415 (rich: only when a terminal shows progress)

        self._stop()
        self._live = Live(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=self._console, transient=True)
        self._task = self._live.add_task(text, total=None)
        self._live.start()

    def log(self, line: str) -> None:
        """Print a finished line (an epoch summary, a written file) in place of the status or bar."""
        self._stop()
        self._echo(line)

    def close(self) -> None:
        """Erase whatever is shown; the terminal is left as a plain run leaves it."""
        self._stop()

    # ---------------------------------------------------------------- epochs

    def training(self, start_epoch: int, epochs: int, images_per_batch: int) -> None:
        """The fit loop starts at ``start_epoch`` of ``epochs``; a batch holds about ``images_per_batch`` images
        (all processes together), for the throughput."""
        self._epoch, self._epochs, self._images = start_epoch - 1, epochs, max(images_per_batch, 1)

    def on_batch(self, index: int, batches: int, loss: Any) -> None:
        """After each training batch: ``index`` of ``batches``, ``loss`` the batch's loss (a detached device tensor).

        The bar counts every batch; the loss is read (a host sync) only every quarter second.
        """
        now = time.perf_counter()
        if index == 0:
            self._new_bar(batches, now)
        if self._live is None or self._task is None:
            return
        fields: dict[str, Any] = {}
        last = index + 1 == batches
        if now - self._read_at >= _READ_EVERY or self._loss is None or last:  # one read more per epoch, at its end
            value = float(loss.item())
            self._loss = value if self._loss is None else 0.9 * self._loss + 0.1 * value
            self._read_at = now
            fields["loss"] = f"loss {self._loss:.4f}"
            elapsed = now - self._started  # since the end of batch 0: the batches after it
            if index > 0 and elapsed > 0:
                fields["speed"] = f"{index * self._images / elapsed:,.0f} img/s"
        if last:
            fields["description"] = f"epoch {self._epoch} ({self._epoch + 1} of {self._epochs}) validating"
        self._live.update(self._task, completed=index + 1, **fields)
        if last:  # an epoch shorter than rich's refresh interval still shows its bar, full, while it validates
            self._live.refresh()

    def _new_bar(self, batches: int, now: float) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Live, TextColumn, TimeRemainingColumn  # noqa: PLC0415 (rich: only when a terminal shows progress)

        self._stop()
        self._epoch += 1
        self._started, self._read_at, self._loss = now, 0.0, None
        self._live = Live(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                          TimeRemainingColumn(), console=self._console, transient=True)
        self._task = self._live.add_task(f"epoch {self._epoch} ({self._epoch + 1} of {self._epochs})",
                                         total=batches, loss="", speed="")
        self._live.start()

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live, self._task = None, None
