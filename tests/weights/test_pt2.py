"""Reading ``.pt2`` files without running their Python: every door ``torch.export.load`` leaves open is refused
before torch reads the file (guard code, pickled payloads, arbitrary call targets, sympy strings, foreign members)."""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from recipec.errors import CheckpointError
from recipec.weights import pt2
from tests.tinynets import tiny_cnn

MARKER = "recipec-pt2-test-ran-code"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_cnn(num_classes=3, width=2).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    return pt2.save(program, tmp_path_factory.mktemp("pt2") / "model.pt2", metadata={"recipec.recipe": "x: 1"})


def _rewrite(source: Path, target: Path, change: Callable[[str, bytes], tuple[str, bytes] | None],
             add: dict[str, bytes] | None = None) -> Path:
    """A copy of the archive with each member passed through ``change`` (None drops it) and ``add`` appended."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        root = src.namelist()[0].split("/", 1)[0]
        for name in src.namelist():
            changed = change(name.split("/", 1)[1], src.read(name))
            if changed is not None:
                dst.writestr(f"{root}/{changed[0]}", changed[1])
        for name, data in (add or {}).items():
            dst.writestr(f"{root}/{name}", data)
    return target


def _graph(edit: Callable[[dict[str, Any]], None]) -> Callable[[str, bytes], tuple[str, bytes]]:
    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "models/model.json":
            model = json.loads(data)
            edit(model)
            data = json.dumps(model).encode()
        return name, data
    return change


def test_a_plain_export_loads_with_its_metadata(good: Path) -> None:
    program, metadata = pt2.load(good)
    assert metadata == {"recipec.recipe": "x: 1"}
    assert program.module()(torch.randn(5, 3, 8, 8)).shape == (5, 3)


def _guard(model: dict[str, Any]) -> None:
    model["guards_code"] = [f"__import__('pathlib').Path('{MARKER}').touch()"]


def _target(model: dict[str, Any]) -> None:
    node = next(n for n in model["graph_module"]["graph"]["nodes"] if n["target"].startswith("torch.ops.aten."))
    node["target"] = "torch.hub.load"


def _expression(model: dict[str, Any]) -> None:
    symbol = next(iter(model["range_constraints"]))
    model["range_constraints"] = {f"__import__('os').system('touch {MARKER}') or {symbol}":
                                  model["range_constraints"][symbol]}
    text = json.dumps(model).replace(f"Symbol('{symbol}', positive=True, integer=True)",
                                     f"__import__('os').system('touch {MARKER}')")
    model.clear()
    model.update(json.loads(text))


@pytest.mark.parametrize(("edit", "message"), [
    (_guard, "carries Python guard code"),
    (_target, "calls 'torch.hub.load', which is not an ATen/prims operator"),
    (_expression, "is not a plain integer expression"),
])
def test_a_graph_that_would_run_code_is_refused(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                edit: Callable[[dict[str, Any]], None], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    bad = _rewrite(good, tmp_path / "bad.pt2", _graph(edit))
    with pytest.raises(CheckpointError, match=message):
        pt2.load(bad)
    assert not (tmp_path / MARKER).exists()


def test_pickled_weights_are_refused(good: Path, tmp_path: Path) -> None:
    def pickled(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            data = json.dumps(config).encode()
        return name, data

    with pytest.raises(CheckpointError, match="is a pickled object"):
        pt2.load(_rewrite(good, tmp_path / "bad.pt2", pickled))


def test_sample_inputs_must_unpickle_weights_only(good: Path, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (print, ("ran",))

    import io
    import pickle

    payload = io.BytesIO()
    torch.save({"x": Evil()}, payload, pickle_module=pickle)
    change = lambda n, d: (n, payload.getvalue()) if n == "data/sample_inputs/model.pt" else (n, d)  # noqa: E731
    with pytest.raises(CheckpointError, match="sample inputs are not plain tensors"):
        pt2.load(_rewrite(good, tmp_path / "bad.pt2", change))


@pytest.mark.parametrize("member", ["data/aotinductor/model/model.so", "version", "data/constants/custom_obj_0"])
def test_members_torch_export_save_does_not_write_are_refused(good: Path, tmp_path: Path, member: str) -> None:
    with pytest.raises(CheckpointError, match=f"{member!r} is not part of a torch.export archive"):
        pt2.check(_rewrite(good, tmp_path / "bad.pt2", lambda n, d: (n, d), add={member: b"\x7fELF"}))


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.pt2").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable torch.export"):
        pt2.check(tmp_path / "x.pt2")


def test_the_refused_expression_is_code_torch_would_run(good: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the checks exist: ``torch.export.load`` of the archive :func:`_expression` writes runs its command."""
    monkeypatch.chdir(tmp_path)
    bad = _rewrite(good, tmp_path / "bad.pt2", _graph(_expression))
    with contextlib.suppress(Exception):  # torch fails after sympify has run the string
        torch.export.load(str(bad))
    assert (tmp_path / MARKER).exists()
