"""File safety: special files as inputs, outputs that must not be replaced, run directories, modes, full disks.

Every special input is refused at once, whatever reads it (recipe, extends, checkpoint,
shard, a file hashed for source.sha256, a card template). A FIFO that would block a reader
forever is unblocked by a watchdog after a few seconds, so a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from recipec._atomic import atomic_path, atomic_write_text
from recipec._files import check_output, open_regular, read_regular
from recipec.pipeline.build import build
from recipec.provenance import file_digest
from recipec.card.render import render_card, write_card
from recipec.cli import main
from recipec.convert.checkpoint import convert
from recipec.errors import CheckpointError, DiskFullError, OutputError, RecipeError, RunDirectoryError, RunError
from recipec.recipe.load import load_recipe
from recipec.pipeline.rundir import MARKER, claim_run_directory
from recipec.train.distributed import World
from recipec.weights import formats, raw

ROOT = Path(__file__).resolve().parents[1]
TINY = """\
    name: tiny-files
    seed: 0
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
    data: {dataset: digits, image_size: 8, per_class: 10}
    train: {epochs: 1}
"""


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    _out, err = capsys.readouterr()
    return int(info.value.code or 0), err


@contextlib.contextmanager
def _unblock(fifo: Path, after: float = 5.0) -> Iterator[None]:
    """Open the FIFO's write end once a reader blocks on it, so a reader that should have refused fails instead of hanging."""
    done = threading.Event()

    def watchdog() -> None:
        deadline = time.monotonic() + after
        while not done.wait(0.1):
            if time.monotonic() < deadline:
                continue
            with contextlib.suppress(OSError):  # ENXIO while nobody reads
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _tensors() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}


# Special inputs: name -> a function that makes one at a path (the path ends in the name the test needs).
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link_to(target: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        path.symlink_to(target)
        return path
    return make


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


SPECIAL = {
    "fifo": (_fifo, "a FIFO"),
    "link to /dev/zero": (_link_to("/dev/zero"), "a character device"),
    "link to /dev/urandom": (_link_to("/dev/urandom"), "a character device"),
    "link to /dev/null": (_link_to("/dev/null"), "a character device"),
    "directory": (_directory, "directory"),
}


@pytest.fixture(params=sorted(SPECIAL))
def special(request: pytest.FixtureRequest) -> tuple[Callable[[Path], Path], str]:
    return SPECIAL[request.param]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    recipe = root / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    return build(load_recipe(recipe), out=root / "run")


# --------------------------------------------------------------------------- special files as inputs


def test_the_helpers_refuse_special_files(tmp_path: Path, special: tuple[Callable[[Path], Path], str]) -> None:
    make, kind = special
    path = make(tmp_path / "x")
    with _unblock(path), pytest.raises(CheckpointError, match=kind):
        read_regular(path, what="thing", max_bytes=100)
    with _unblock(path), pytest.raises(CheckpointError, match=kind), open_regular(path, what="thing"):
        pass


def test_devices_are_named_through_their_link(tmp_path: Path) -> None:
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(RecipeError, match=r"zero\.yaml \(a link to /dev/zero\): is a character device"):
        load_recipe(link)


def test_recipe_special_files_are_refused_by_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      special: tuple[Callable[[Path], Path], str]) -> None:
    make, kind = special
    path = make(tmp_path / "r.yaml")
    with _unblock(path):
        code, err = cli(capsys, "validate", str(path))
    assert code == 2 and str(path) in err and "Traceback" not in err, err
    assert kind in err or "is a directory" in err  # click says so itself for a directory


def test_extends_special_file_is_refused_where_extends_is_written(tmp_path: Path,
                                                                   special: tuple[Callable[[Path], Path], str]) -> None:
    make, kind = special
    base = make(tmp_path / "base.yaml")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: c\n")
    with _unblock(base), pytest.raises(RecipeError) as info:
        load_recipe(child)
    assert info.value.problems[0].startswith(f"{child}:1:10: extends: {base}")
    assert kind in info.value.problems[0]


@pytest.mark.parametrize("where", ["recipe", "extends"])
def test_an_oversized_recipe_is_refused_before_it_is_read(tmp_path: Path, where: str) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 500_000)  # 5 MB of comments
    target = big
    if where == "extends":
        target = tmp_path / "child.yaml"
        target.write_text("extends: big.yaml\n")
    with pytest.raises(RecipeError, match=r"more than a recipe may be \(4,194,304 bytes\)"):
        load_recipe(target)


def test_recipe_loading_stays_torch_free(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "r.yaml")
    code = ("import sys; from recipec.recipe.load import load_recipe\n"
            "try:\n    load_recipe(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["RecipeError", "False"], out


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_special_files_are_refused(tmp_path: Path, suffix: str,
                                              special: tuple[Callable[[Path], Path], str]) -> None:
    make, kind = special
    path = make(tmp_path / f"ckpt{suffix}")
    if kind == "directory":  # a directory is searched for its one checkpoint: give it a special one
        _fifo(path / "model.safetensors")
        kind = "a FIFO"
    for read in (formats.load, raw.detect_format, formats.read_metadata, raw.sha256, raw.load):
        with _unblock(path if path.is_fifo() else path / "model.safetensors"), \
                pytest.raises(CheckpointError, match=kind):
            read(path)


def test_a_special_training_state_is_refused(tmp_path: Path, special: tuple[Callable[[Path], Path], str]) -> None:
    from recipec.train.state import load_state

    make, kind = special
    path = make(tmp_path / "last.pt")
    with _unblock(path), pytest.raises(CheckpointError, match=kind):
        load_state(path)


def test_inspect_of_a_fifo_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = _fifo(tmp_path / "model.pt")
    with _unblock(fifo):
        code, err = cli(capsys, "inspect", str(fifo))
    assert code == 2 and "is a FIFO (named pipe), not a regular file" in err, err


@pytest.mark.parametrize("shard", ["fifo", "link to /dev/zero", "link to /dev/urandom"])
def test_a_special_shard_is_refused(tmp_path: Path, shard: str) -> None:
    index = tmp_path / "model.safetensors.index.json"
    written = formats.save({"a": torch.ones(300), "b": torch.zeros(300)}, index, shard_size=1200)
    first = written[0]
    first.unlink()
    SPECIAL[shard][0](first)
    with _unblock(first), pytest.raises(CheckpointError, match=f"{first.name}.*{SPECIAL[shard][1]}"):
        formats.load(index)


def test_a_special_index_is_refused(tmp_path: Path) -> None:
    index = _link_to("/dev/zero")(tmp_path / "model.safetensors.index.json")
    with pytest.raises(CheckpointError, match="character device"):
        formats.load(index)


def test_files_hashed_for_provenance_must_be_regular(tmp_path: Path, special: tuple[Callable[[Path], Path], str]) -> None:
    make, kind = special
    path = make(tmp_path / "source.pt")
    with _unblock(path), pytest.raises(CheckpointError, match=kind):
        file_digest(path)


def test_plan_refuses_a_special_source_and_template_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = _fifo(tmp_path / "source.safetensors")
    template = _link_to("/dev/zero")(tmp_path / "card.md.j2")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(TINY) + f"source: {{checkpoint: {fifo}, sha256: '{'0' * 64}'}}\n"
                      f"card: {{template: {template}}}\n")
    with _unblock(fifo):
        code, err = cli(capsys, "plan", str(recipe))
    assert code == 2 and "source.checkpoint: " in err and "is a FIFO (named pipe), not a regular file" in err, err
    assert "card.template: " in err and "is a character device, not a regular file" in err, err


@pytest.mark.parametrize("what", ["template", "include"])
def test_card_template_special_files_are_refused(run: Path, tmp_path: Path, what: str,
                                                 special: tuple[Callable[[Path], Path], str]) -> None:
    make, kind = special
    if what == "template":
        template = make(tmp_path / "card.md.j2")
    else:
        make(tmp_path / "part.md")
        template = tmp_path / "card.md.j2"
        template.write_text("# {{ name }}\n{% include 'part.md' %}\n")
    with _unblock(tmp_path / ("card.md.j2" if what == "template" else "part.md")), \
            pytest.raises(RecipeError, match=kind):
        render_card(run, template=template)


def test_an_oversized_template_is_refused(run: Path, tmp_path: Path) -> None:
    template = tmp_path / "card.md.j2"
    template.write_text("x" * (2 << 20))
    with pytest.raises(RecipeError, match="more than a card template may be"):
        render_card(run, template=template)


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", ["link to /dev/null", "fifo", "directory"])
def test_special_outputs_are_refused_and_left_as_they_are(tmp_path: Path, name: str) -> None:
    target = SPECIAL[name][0](tmp_path / "out.safetensors")
    before = os.lstat(target)
    with pytest.raises(OutputError, match=SPECIAL[name][1]):
        formats.save(_tensors(), target)
    with pytest.raises(OutputError, match=SPECIAL[name][1]):
        atomic_write_text(target, "x")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]  # no temporary file left


@pytest.mark.parametrize("argv", [["schema", "--out", "/dev/null"], ["convert", "SRC", "/dev/null", "--to", "torch"],
                                  ["card", "RUN", "--out", "/dev/null"]])
def test_dev_null_as_out_is_exit_2_and_stays_a_device(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       argv: list[str]) -> None:
    argv = [str(run / "model.safetensors") if a == "SRC" else str(run) if a == "RUN" else a for a in argv]
    code, err = cli(capsys, *argv)
    assert code == 2 and "/dev/null: is a character device" in err and "Traceback" not in err, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "model.safetensors"
    real.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    formats.save(_tensors(), link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert torch.equal(formats.load_state_dict(real)["w"], _tensors()["w"])
    assert sorted(p.name for p in elsewhere.iterdir()) == ["model.safetensors"]
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(elsewhere / "new.txt")
    atomic_write_text(dangling, "hi")
    assert dangling.is_symlink() and (elsewhere / "new.txt").read_text() == "hi"


def test_a_symlinked_sharded_index_is_written_through_with_its_shards_beside_the_link(tmp_path: Path) -> None:
    # readers look for shards beside the path they are given (the Hugging Face cache links every file)
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "index.json").write_text("{}")
    link = tmp_path / "model.safetensors.index.json"
    link.symlink_to(real_dir / "index.json")
    written = formats.save({"a": torch.ones(300), "b": torch.zeros(300)}, link, shard_size=1200)
    assert link.is_symlink() and (real_dir / "index.json").read_text() != "{}"
    assert [p.parent for p in written] == [tmp_path] * 3 and sorted(os.listdir(real_dir)) == ["index.json"]
    assert torch.equal(formats.load_state_dict(link)["a"], torch.ones(300))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        formats.save(_tensors(), tmp_path / "m.safetensors")
        formats.save(_tensors(), tmp_path / "m.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "m.safetensors", "m.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    formats.save(_tensors(), target)
    os.chmod(target, 0o640)
    old = os.umask(0o077)
    try:
        formats.save(_tensors(), target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_the_run_directory_honours_the_umask(run: Path) -> None:
    # the module's run was built under the test process's umask
    umask = os.umask(0)
    os.umask(umask)
    for name in ("recipe.yaml", "model.safetensors", "README.md", "checkpoints/last.pt"):
        assert stat.S_IMODE(os.stat(run / name).st_mode) == 0o666 & ~umask, name


# --------------------------------------------------------------------------- full disks and named paths


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_full_disk_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    target = tmp_path / f"model{suffix}"
    formats.save(_tensors(), target)
    before = target.read_bytes()
    if suffix == ".pt":
        monkeypatch.setattr(torch, "save", _no_space)
    else:
        def half_written(tensors: object, path: Path, metadata: object = None) -> None:
            Path(path).write_bytes(b"partial")  # recipec streams the file itself: the OSError is the kernel's
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr("recipec.weights._safetensors._stream", half_written)
    with pytest.raises(DiskFullError, match=f"^{target}: no space left on device") as info:
        formats.save({"w": torch.zeros(3)}, target)
    assert ".tmp" not in str(info.value) and isinstance(info.value, RunError) and info.value.exit_code == 1
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_full_disk_keeps_the_last_training_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recipec.train.state import RunPoint, save_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    kwargs = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "recipe_yaml": "name: x\n"}
    last = tmp_path / "last.pt"
    save_state(last, point=RunPoint(epoch=1, step=1, trainable_groups=["head"], history=[]),
               **kwargs)  # type: ignore[arg-type]
    before = last.read_bytes()
    monkeypatch.setattr(torch, "save", _no_space)
    with pytest.raises(RunError, match="no space left on device"):
        save_state(last, point=RunPoint(epoch=2, step=1, trainable_groups=["head"], history=[]),
                   **kwargs)  # type: ignore[arg-type]
    assert last.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_convert_on_a_full_disk_is_exit_1(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", _no_space)
    out = tmp_path / "m.pt"
    code, err = cli(capsys, "convert", str(run / "model.safetensors"), str(out))
    assert code == 1 and f"error: {out}: no space left on device" in err, err
    assert list(tmp_path.iterdir()) == []


def test_write_errors_name_the_users_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.safetensors"

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(args[1]))
    monkeypatch.setattr("recipec.weights._safetensors._stream", refuse)
    with pytest.raises(PermissionError) as info:
        formats.save(_tensors(), target)
    assert info.value.filename == str(target)

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("bad header")
    monkeypatch.setattr("recipec.weights._safetensors._stream", broken)
    with pytest.raises(CheckpointError, match=f"^{target}: cannot write safetensors") as caught:
        formats.save(_tensors(), target)
    assert ".tmp" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["convert", "", "OUT"], ["convert", "SRC", ""], ["inspect", ""],
                                  ["features", "", "--layers", "0", "--out", "OUT"],
                                  ["features", "SRC", "--layers", "0", "--out", ""], ["schema", "--out", ""],
                                  ["card", "RUN", "--out", ""], ["build", "RECIPE", "--out", ""]])
def test_an_empty_path_is_an_error_not_the_working_directory(run: Path, tmp_path: Path, argv: list[str],
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(run / "model.safetensors", tmp_path / "model.safetensors")  # what "" would pick from the cwd
    (tmp_path / "README.md").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    subs = {"SRC": str(run / "model.safetensors"), "OUT": str(tmp_path / "out.safetensors"), "RUN": str(run),
            "RECIPE": str(run / "recipe.yaml")}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, err = cli(capsys, *(subs.get(a, a) for a in argv))
    assert code == 2 and "empty" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --------------------------------------------------------------------------- an output that is an input


def test_convert_refuses_its_source_by_any_name(run: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.safetensors"
    shutil.copy(run / "model.safetensors", src)
    link, hard = tmp_path / "link.safetensors", tmp_path / "hard.safetensors"
    link.symlink_to(src)
    os.link(src, hard)
    before = src.read_bytes()
    for dst in (src, link, hard):
        with pytest.raises(CheckpointError, match="source checkpoint itself|is an input of this command"):
            convert(src, dst)
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    index.parent.mkdir()
    shards = formats.save({"a": torch.ones(300), "b": torch.zeros(300)}, index, shard_size=1200)
    os.link(shards[0], tmp_path / "shard-copy.safetensors")
    with pytest.raises(CheckpointError, match="is an input of this command"):
        convert(index, tmp_path / "shard-copy.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    with pytest.raises(CheckpointError, match="is an input of this command"):
        convert(src, recipe, to="torch", recipe=recipe)
    assert src.read_bytes() == before and index.is_file()


def test_convert_refuses_its_source_on_the_command_line(run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.safetensors"
    shutil.copy(run / "model.safetensors", src)
    os.link(src, tmp_path / "b.safetensors")
    code, err = cli(capsys, "convert", str(src), str(tmp_path / "b.safetensors"))
    assert code == 2 and "is an input of this command" in err, err


def test_features_refuses_to_overwrite_its_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "model.safetensors"
    shutil.copy(run / "model.safetensors", export)
    hard = tmp_path / "hard.safetensors"
    os.link(export, hard)
    before = export.read_bytes()
    for out in (export, hard):
        code, err = cli(capsys, "features", str(export), "--layers", "0", "--out", str(out))
        assert code == 2 and "is an input of this command" in err, err
    assert export.read_bytes() == before


def test_card_out_must_not_be_a_file_of_its_run(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    template = tmp_path / "card.md.j2"
    template.write_text("# {{ name }}\n")
    for out in ("model.safetensors", "recipe.yaml", "metrics.jsonl", "checkpoints/last.pt"):
        before = (copy / out).read_bytes()
        with pytest.raises(RunDirectoryError, match="is an input of this command"):
            write_card(copy, out=copy / out)
        assert (copy / out).read_bytes() == before
    with pytest.raises(RunDirectoryError, match="is an input of this command"):
        write_card(copy, template=template, out=template)
    assert write_card(copy, out=tmp_path / "CARD.md") == tmp_path / "CARD.md"


def test_check_output_compares_files_not_names(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    os.link(a, tmp_path / "sub" / "b.bin")
    assert check_output(tmp_path / "new.bin", inputs=[a]) == tmp_path / "new.bin"
    with pytest.raises(OutputError, match=r"sub/b\.bin: is an input of this command \(.*a\.bin, the same file\)"):
        check_output(tmp_path / "sub" / "b.bin", inputs=[a])
    with pytest.raises(OutputError, match="empty"):
        check_output("", inputs=[a])


# --------------------------------------------------------------------------- run directories: ownership and lock


@pytest.fixture
def recipe(tmp_path: Path):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY))
    return load_recipe(path)


@pytest.mark.parametrize("mine", [["README.md", "recipe.yaml"], ["notes.txt"], ["README.md"], ["src/"]])
def test_a_directory_recipec_did_not_make_is_refused(recipe, tmp_path: Path, mine: list[str]) -> None:
    out = tmp_path / "project"
    out.mkdir()
    for name in mine:
        (out / name).mkdir() if name.endswith("/") else (out / name).write_text("mine\n")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunDirectoryError, match="is not a recipec run directory: it holds files recipec did not "
                                                "write .*choose another --out"):
        build(recipe, out=out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert all((out / n).read_text() == "mine\n" for n in mine if not n.endswith("/"))


def test_build_out_dot_is_refused_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(TINY))
    (tmp_path / "README.md").write_text("my project\n")
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, "build", "recipe.yaml", "--out", ".")
    assert code == 2 and "is not a recipec run directory" in err, err
    assert (tmp_path / "README.md").read_text() == "my project\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "recipe.yaml"]


def test_run_directories_recipec_made_are_claimed(run: Path, tmp_path: Path) -> None:
    assert (run / MARKER).is_file()
    new, empty = tmp_path / "new" / "run", tmp_path / "empty"
    empty.mkdir()
    legacy = tmp_path / "legacy"  # a run from before the mark
    shutil.copytree(run, legacy, ignore=shutil.ignore_patterns(MARKER))
    for directory in (new, empty, legacy, run):
        with claim_run_directory(directory) as claimed:
            assert claimed == directory and (directory / MARKER).is_file()
    assert not (tmp_path / "new").exists() and os.listdir(empty) == []  # a claim that wrote nothing leaves no trace
    assert (legacy / MARKER).is_file() and (run / MARKER).is_file()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"), claim_run_directory(file):
        pass


def test_a_second_build_of_a_locked_run_is_refused(recipe, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with claim_run_directory(out):
        with pytest.raises(RunDirectoryError, match="another build is writing this run directory right now"):
            build(recipe, out=out)
        assert sorted(p.name for p in out.iterdir()) == [MARKER]
    with claim_run_directory(out):  # released at the end of the block
        pass


def test_the_lock_dies_with_its_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from recipec.pipeline.rundir import claim_run_directory\n"
         "with claim_run_directory(__import__('pathlib').Path(sys.argv[1])):\n"
         "    print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, err = cli(capsys, "build", str(recipe), "--out", str(out))
        assert code == 2 and "another build is writing this run directory right now" in err, err
    finally:
        holder.kill()
        holder.wait()
    with claim_run_directory(out):  # kill -9 left no stale lock
        pass


def test_a_forked_child_does_not_hold_the_lock(tmp_path: Path) -> None:
    # a DataLoader worker is a fork of the build: were the lock's descriptor shared with it, a worker
    # outliving a killed build would keep the run directory locked for the `--resume` that follows
    out = tmp_path / "run"
    with claim_run_directory(out):
        (out / "metrics.jsonl").write_text("")  # the build wrote something: the mark (and its lock) stays
        ready, tell = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: hold on (as a slow-dying worker would) after the parent's lock is gone
            os.write(tell, b"x")  # fork() has returned here, so the at-fork handlers have run
            time.sleep(3)
            os._exit(0)
        os.read(ready, 1)
    try:
        with claim_run_directory(out):  # the parent released it: the child holds nothing
            pass
    finally:
        os.waitpid(pid, 0)


@pytest.mark.slow  # two processes with torch and gloo: ~30 s on two cores (the logic: the next test, fast)
def test_a_locked_run_stops_every_rank_of_nproc_at_once(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    out = tmp_path / "run"
    with claim_run_directory(out):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "recipec", "build", str(recipe), "--out", str(out),
                                 "--nproc", "2"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("another build is writing this run directory") == 1, result.stderr
    assert time.monotonic() - started < 120  # no rank waited for the collective timeout
    assert not out.exists()  # the holder wrote nothing, so it left nothing


def test_ranks_above_zero_neither_claim_nor_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import recipec.train.distributed as distributed

    out = tmp_path / "run"
    sums: list[list[float]] = []

    def all_sum(values: list[float], world: World) -> list[float]:
        sums.append(list(values))
        return [verdict]
    monkeypatch.setattr(distributed, "all_sum", all_sum)
    verdict = 0.0
    with claim_run_directory(out, world=World(rank=1, size=2)):
        assert not out.exists()  # rank 0 makes it
    with claim_run_directory(out):  # rank 1 took no lock
        pass
    verdict = 1.0  # rank 0 failed: rank 1 fails too instead of waiting in a collective
    with pytest.raises(RunDirectoryError, match="rank 0 could not claim"), \
            claim_run_directory(out, world=World(rank=1, size=2)):
        pass
    with claim_run_directory(out), pytest.raises(RunDirectoryError, match="another build"), \
            claim_run_directory(out, world=World(rank=0, size=2)):
        pass
    assert sums == [[0.0], [0.0], [1.0]]


def test_a_build_never_writes_over_its_source_checkpoint(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text("")
    os.link(run / "model.safetensors", out / "model.safetensors")
    source = tmp_path / "source.safetensors"
    os.link(run / "model.safetensors", source)
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(TINY) + f"source: {{checkpoint: {source}}}\n")
    with pytest.raises(RunDirectoryError, match=r"model\.safetensors: is an input of this command"):
        build(load_recipe(path), out=out)


def test_atomic_path_cleans_up_after_any_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise KeyError("boom")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_errors_raised_while_writing_name_the_users_path(tmp_path: Path) -> None:
    target = tmp_path / "x.onnx"
    with pytest.raises(CheckpointError) as info, atomic_path(target) as tmp:
        raise CheckpointError([(("export", "onnx"), f"{tmp}: does not verify"), f"{tmp}: cannot load"])
    assert info.value.problems == [f"export.onnx: {target}: does not verify", f"{target}: cannot load"]
    assert info.value.paths == [("export", "onnx"), None]


def test_an_upstream_runs_recipe_yaml_must_be_a_regular_file(tmp_path: Path) -> None:
    """source.recipe compares the upstream run's recipe.yaml: a FIFO there must not block the build."""
    from recipec.pipeline.upstream import same_recipe as _same_recipe
    from recipec.recipe.load import load_recipe

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart.yaml")
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    with _unblock(fifo, after=3.0):
        assert _same_recipe(fifo, recipe) is False
    assert time.monotonic() - started < 2.5  # refused at once, not read until the watchdog opened it
