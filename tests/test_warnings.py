"""Warnings reach the user on stderr, in recipec's words, also under --quiet; a library's never raw."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from recipec.cli import main
from recipec.commands._common import show_warning
from recipec.errors import RecipecWarning, warn
from recipec.pipeline.resume import resume_state
from recipec.train.state import RunPoint, checkpoint_paths, save_state

ROOT = Path(__file__).resolve().parents[1]
SITE = str(Path(torch.__file__).parent / "serialization.py")  # a file of an installed library


def _shown(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    show_warning(*args)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == ""
    return err


def test_recipec_warnings_read_warning_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert _shown(capsys, RecipecWarning("damaged checkpoint passed over: x"), RecipecWarning, __file__, 1) == \
        "warning: damaged checkpoint passed over: x\n"


def test_a_library_warning_is_named_by_its_library_without_path_or_source(capsys: pytest.CaptureFixture[str]) -> None:
    err = _shown(capsys, UserWarning("Validating sparse tensor invariants\n  more detail"), UserWarning, SITE, 2244)
    assert err == "warning: torch: Validating sparse tensor invariants\n"


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning, PendingDeprecationWarning])
def test_a_library_deprecation_is_recipecs_business_not_the_users(capsys: pytest.CaptureFixture[str],
                                                                   category: type[Warning]) -> None:
    assert _shown(capsys, category("old"), category, SITE, 1) == ""


def test_warnings_of_other_code_name_their_category(capsys: pytest.CaptureFixture[str]) -> None:
    assert _shown(capsys, RuntimeWarning("overflow"), RuntimeWarning, "/home/me/factory.py", 3) == \
        "warning: RuntimeWarning: overflow\n"


def test_ranks_above_0_leave_recipec_warnings_to_rank_0(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _shown(capsys, RecipecWarning("x"), RecipecWarning, __file__, 1) == ""


def test_warn_is_a_python_warning_for_api_users() -> None:
    with pytest.warns(RecipecWarning, match="^look out$"):
        warn("look out")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipecWarning)  # what an API user may do
        with pytest.raises(RecipecWarning):
            warn("look out")


def test_a_damaged_checkpoint_is_a_warning_not_a_progress_line(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in (1, 2):
        point = RunPoint(epoch=epoch, step=epoch, trainable_groups=["head"], history=[{"epoch": e} for e in range(epoch)])
        save_state(checkpoint_paths(folder, epoch)[0], model=model, optimizer=optimizer, point=point,
                   scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                   recipe_yaml="name: x\n")
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    lines: list[str] = []
    with pytest.warns(RecipecWarning, match=r"^damaged checkpoint passed over: .*last\.pt"):
        state = resume_state(folder, lines.append)
    assert state["epoch"] in (1, 2) and not any("passed over" in line for line in lines)


def test_the_cli_shows_no_raw_library_warning(tmp_path: Path) -> None:
    """A sparse tensor: torch's own UserWarning (with its site-packages path) used to precede recipec's error."""
    path = tmp_path / "sparse.pt"
    torch.save({"w": torch.eye(3).to_sparse(), "b": torch.zeros(3)}, path)
    for command in (["convert", str(path), str(tmp_path / "out.safetensors")], ["inspect", str(path)]):
        result = subprocess.run([sys.executable, "-m", "recipec", *command], capture_output=True, text=True, cwd=ROOT)
        assert "site-packages" not in result.stderr and "UserWarning" not in result.stderr, result.stderr
    assert result.returncode == 0
    assert not (tmp_path / "out.safetensors").exists()


def test_main_restores_the_previous_showwarning() -> None:
    before = warnings.showwarning
    with pytest.raises(SystemExit):
        main(["--help"])
    assert warnings.showwarning is before


@pytest.mark.slow  # six fresh processes, one of them a build with an ONNX export (~30 s)
def test_a_whole_session_prints_nothing_but_recipec_lines_on_stderr(tmp_path: Path) -> None:
    """build (with an ONNX export and its parity check), inspect, eval, predict, convert: every stderr line is
    recipec's own (``warning: ...``, ``note: ...``), none a library's raw warning, path or C++ log line."""
    from tests.imagedata import make_imagefolder
    from tests.tinyrecipes import tiny_yaml

    root = tmp_path / "images"
    written = make_imagefolder(root, ["a", "b"], {"": 6}, size=8)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_yaml(
        model='{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 2}}',
        freeze="{trainable: [head]}", optimizer="{name: sgd, lr: 0.01}", train="{epochs: 1}",
        data=f"{{dataset: imagefolder, root: {root}, image_size: 8, batch_size: 4, num_workers: 1, "
             "val_fraction: 0.25}", export="{formats: [safetensors, onnx]}"))
    run = tmp_path / "run"
    image = str(written[""][0][0])
    commands = [["build", str(recipe), "--out", str(run), "--quiet"], ["inspect", str(run / "model.onnx")],
                ["eval", str(run), "--trust-factory", "tests.tinynets:tiny_cnn"],
                ["predict", str(run / "model.onnx"), image],
                ["predict", str(run / "model.safetensors"), image, "--trust-factory", "tests.tinynets:tiny_cnn"],
                ["convert", str(run / "model.safetensors"), str(tmp_path / "copy.pt")]]
    for command in commands:
        result = subprocess.run([sys.executable, "-m", "recipec", *command], capture_output=True, text=True,
                                cwd=ROOT)
        assert result.returncode == 0, (command, result.stderr)
        foreign = [line for line in result.stderr.splitlines() if line and not line.startswith(("warning: ", "note: "))]
        assert not foreign and "site-packages" not in result.stderr, (command, result.stderr)
