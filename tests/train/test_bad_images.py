"""Image files that cannot be read: a located error naming the file, in the main process and in workers alike.

Decompression bombs (PIL refuses images over 178,956,970 pixels, twice ``Image.MAX_IMAGE_PIXELS``),
truncated files and pixel data that does not decode used to end in ``internal error: ...
Caught DecompressionBombError in DataLoader worker process 0`` with a traceback.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from recipec.cli import main
from tests.imagedata import make_imagefolder
from tests.tinyrecipes import tiny_yaml

CLASSES = ["cat", "dog"]


def png_claiming(path: Path, width: int, height: int) -> None:
    """A valid 1x1 grey PNG whose header (CRC recomputed) claims ``width`` x ``height``: a bomb PIL sees at open."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = struct.pack(">II", width, height)
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 17])))
    path.write_bytes(bytes(data))


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def corrupt_pixels(path: Path) -> None:
    """Chunks intact (CRCs recomputed), pixel data not a zlib stream: PIL opens it, decoding fails."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4:start])[0]
    data[start + 4:start + 4 + length] = b"\xff" * length
    data[start + 4 + length:start + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 4 + length])))
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    written = make_imagefolder(root, CLASSES, {"": 6}, size=8)
    return root, written[""][3][0]


def _recipe(tmp_path: Path, root: Path, workers: int, on_bad: str = "error") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(tiny_yaml(
        model='{arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 2}}',
        freeze="{trainable: [head]}", optimizer="{name: sgd, lr: 0.01}", train="{epochs: 1}",
        data=f"{{dataset: imagefolder, root: {root}, image_size: 8, batch_size: 4, num_workers: {workers}, "
             f"val_fraction: 0.25, on_bad_image: {on_bad}, normalize: none}}"))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage, reason", [
    (lambda p: png_claiming(p, 20000, 20000), "exceeds limit of 178956970 pixels"),
    (truncated, "unreadable image"),
    (corrupt_pixels, "unreadable image"),
], ids=["bomb", "truncated", "corrupt-pixels"])
def test_a_bad_image_during_training_is_a_located_exit_2(tmp_path: Path, folder: tuple[Path, Path], workers: int,
                                                          damage, reason: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root, victim = folder
    damage(victim)
    code, _out, err = _run(capsys, "build", str(_recipe(tmp_path, root, workers)), "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert f"error: unreadable image {victim}: " in err and reason in err, err
    assert "Traceback" not in err and "internal error" not in err and "worker process" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_plan_lists_the_bomb_and_skip_leaves_it_out(tmp_path: Path, folder: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, victim = folder
    png_claiming(victim, 20000, 20000)
    code, _, err = _run(capsys, "plan", str(_recipe(tmp_path, root, 1)))
    assert code == 2 and f"unreadable image {victim}: Image size (400000000 pixels) exceeds limit" in err, err
    code, _out, err = _run(capsys, "build", str(_recipe(tmp_path, root, 1, on_bad="skip")), "--out",
                          str(tmp_path / "run"))
    assert code == 0, err
    assert (tmp_path / "run" / "skipped_images.txt").read_text() == f"{victim}\n"
