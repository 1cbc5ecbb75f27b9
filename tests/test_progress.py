"""What a build prints: a bar per epoch on a terminal, plain lines elsewhere, nothing with --quiet."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recipec.cli import main
from recipec.progress import Progress, for_terminal
from tests.tinyrecipes import GROUPS2, tiny_yaml, write_recipe

ROOT = Path(__file__).resolve().parents[1]

TINY = tiny_yaml(model='{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 2}, head: {num_classes: 10}}',
                 groups=GROUPS2, freeze="{trainable: [head], unfreeze: {1: [body]}}", optimizer=None,
                 data="{dataset: digits, image_size: 8, per_class: 8, batch_size: 8}", train="{epochs: 2}")
EPOCH_LINE = re.compile(r"^epoch \d \(\d of 2\)  train_loss \d+\.\d{4}  val_loss \d+\.\d{4}  val_acc \d\.\d{3}  "
                        r"trainable .+  \(\d+\.\d s\)$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _CountedLoss:
    """A stand-in for a device tensor that counts host syncs (``.item()``)."""

    def __init__(self) -> None:
        self.reads = 0

    def item(self) -> float:
        self.reads += 1
        return 0.5


def _recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path, TINY)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "TERM": "xterm"}


def test_a_terminal_gets_a_progress_and_a_pipe_none() -> None:
    assert isinstance(for_terminal(_Terminal()), Progress)
    assert for_terminal(io.StringIO()) is None


def test_the_loss_is_read_a_few_times_a_second_not_per_batch() -> None:
    stream = _Terminal()
    progress = Progress(stream)
    progress.training(0, 1, 32)
    loss = _CountedLoss()
    started = time.perf_counter()
    for i in range(2000):
        progress.on_batch(i, 2000, loss)
    seconds = time.perf_counter() - started
    progress.log("epoch 0 (1 of 1)  done")
    assert loss.reads <= 2 + 4 * seconds  # the first batch, then at most one read per quarter second
    assert stream.getvalue().endswith("epoch 0 (1 of 1)  done\n")  # the bar is gone, the line stays


def test_a_real_loss_tensor_is_shown_on_the_bar() -> None:
    stream = _Terminal()
    progress = Progress(stream)
    progress.status("compiling tiny and loading weights")
    progress.training(3, 5, 8)
    progress.on_batch(0, 4, torch.tensor(9.0))
    time.sleep(0.3)  # the next batch reads its loss: the running loss is shown with the throughput
    progress.on_batch(1, 4, torch.tensor(1.0))
    progress._live.refresh()  # render now rather than on rich's refresh thread
    progress.close()
    shown = ANSI.sub("", stream.getvalue())
    assert "epoch 3 (4 of 5)" in shown and "2/4" in shown and "loss 8.2000" in shown and "img/s" in shown


def _pty_build(args: list[str], timeout: float = 240) -> str:
    """Run ``recipec build ARGS`` with stdout on a pseudo-terminal; everything it printed there."""
    leader, follower = pty.openpty()
    os.set_inheritable(follower, True)
    proc = subprocess.Popen([sys.executable, "-m", "recipec", "build", *args], cwd=ROOT, env=_env(),
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal (EIO)
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=30) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_shows_phases_and_a_bar_per_epoch(tmp_path: Path) -> None:
    shown = _pty_build([str(_recipe(tmp_path)), "--out", str(tmp_path / "tty")])
    text = ANSI.sub("", shown)
    # the phases before training, then a bar (batches of the epoch, the loss, throughput), then the epoch line
    assert "loading the data" in text and "compiling tests.tinynets:tiny_cnn and loading weights" in text
    assert "\x1b[" in shown and "━" in shown and "img/s" in text and re.search(r" \d+/\d+ ", text)
    assert "exporting" in text and "writing the model card" in text
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert len([line for line in lines if EPOCH_LINE.match(line)]) == 2
    assert lines[-1] == f"done: {tmp_path / 'tty'}"


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def test_not_a_terminal_gets_plain_lines_and_quiet_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path)
    # stdout not a terminal (a file, a pipe, CI): exactly the plain lines, no control characters at all
    assert _cli("build", str(recipe), "--out", str(tmp_path / "file")) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out) and "img/s" not in out
    assert [line for line in lines if line.startswith("epoch ")] == [line for line in lines if EPOCH_LINE.match(line)]
    assert len([line for line in lines if EPOCH_LINE.match(line)]) == 2
    assert lines[-1] == f"done: {tmp_path / 'file'}"

    # --quiet, even on a terminal: nothing at all on success
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert _cli("build", str(recipe), "--out", str(tmp_path / "quiet"), "--quiet") == 0
    assert terminal.getvalue() == "" and capsys.readouterr() == ("", "")
    assert (tmp_path / "quiet" / "model.safetensors").is_file()


def test_quiet_prints_nothing_but_errors(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    (tmp_path / "bad.yaml").write_text(recipe.read_text().replace("epochs: 2", "epochs: two"))
    done = subprocess.run([sys.executable, "-m", "recipec", "build", str(tmp_path / "bad.yaml"), "--quiet"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "train.epochs" in done.stderr
