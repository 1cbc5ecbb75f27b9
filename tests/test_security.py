"""No file names code that runs: hostile exports whose recipe names a factory that would leave a marker file.

A recipe embedded in a file (an export's metadata, a sharded index, a training state, a run
directory's recipe.yaml, an ONNX graph's metadata_props) is refused before its factory's
module is imported, through every door: ``recipec.load``, ``convert`` (to every format),
``features``, ``inspect``, ``card``, ``build --resume`` and ``source.recipe``. Trust is given
per call and per exact factory name, and even then only a Python function or an nn.Module
class that returns a module is called.
"""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import recipec
import tests.tinynets  # noqa: F401  the upstream recipe's factory, imported as a user's recipe does
from recipec.provenance import export_metadata
from recipec.cli import main
from recipec.errors import ModelError, RecipecError, UntrustedFactoryError
from recipec.recipe.load import dump_recipe, load_recipe
from recipec.weights import formats
from tests.tinynets import tiny_cnn

FORMATS = ["safetensors", "torch", "sharded", "index-only", "training-state", "onnx"]
TARGETS = ["x.safetensors", "x.pt", "x.onnx", "x.safetensors.index.json"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, body: str) -> str:
    """A module on sys.path under a fresh name (never imported before), made of ``body``."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _recipe(arch: str, kwargs: dict[str, object] | None = None, *, name: str = "hostile") -> str:
    return yaml.safe_dump({
        "name": name, "device": "cpu",
        "model": {"arch": arch, "kwargs": kwargs or {}, "head": {"num_classes": 10}},
        "data": {"dataset": "digits", "image_size": 8, "per_class": 10},
        "train": {"epochs": 1},
    }, sort_keys=False)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return tiny_cnn(num_classes=10, width=4).state_dict()


def _write(fmt: str, recipe_yaml: str, directory: Path) -> Path:
    """A file of format ``fmt`` that carries ``recipe_yaml`` where recipec would look for a recipe."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = export_metadata(recipe_yaml=recipe_yaml, provenance={})
    if fmt == "safetensors":
        return formats.save(_state(), directory / "model.safetensors", metadata=meta)[0]
    if fmt == "torch":
        return formats.save(_state(), directory / "model.pt", metadata=meta)[0]
    if fmt == "sharded":
        return formats.save(_state(), directory / "model.safetensors", metadata=meta, shard_size=1024)[-1]
    if fmt == "index-only":  # harmless shards; the index's own metadata names the factory
        index = formats.save(_state(), directory / "model.safetensors", shard_size=1024)[-1]
        data = json.loads(index.read_text())
        data["metadata"] = {**data.get("metadata", {}), **meta}
        index.write_text(json.dumps(data))
        return index
    if fmt == "training-state":
        from recipec.train.state import RunPoint, save_state

        model = tiny_cnn(num_classes=10, width=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        (directory / "checkpoints").mkdir(exist_ok=True)
        return save_state(directory / "checkpoints" / "last.pt", model=model, optimizer=optimizer,
                          scheduler=scheduler, recipe_yaml=recipe_yaml,
                          point=RunPoint(epoch=1, step=1, trainable_groups=["head"],
                                         history=[{"epoch": 0, "train_loss": 1.0}]))
    assert fmt == "onnx"  # the weights as initializers: a source convert reads
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
                              initializer=[numpy_helper.from_array(t.numpy(), k) for k, t in _state().items()])
    proto = helper.make_model(graph)
    helper.set_model_props(proto, meta)
    path = directory / "model.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.fixture(params=["os-system", "module"])
def hostile(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """(recipe YAML naming a factory that would create the marker, the marker), in two kinds:
    ``os:system`` with a shell command (the issue's example), and a module whose import alone
    writes the marker."""
    marker = tmp_path / "pwned"
    if request.param == "os-system":
        return _recipe("os:system", {"command": f"touch {marker}"}), marker
    name = _module(tmp_path, monkeypatch, "evil", f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("imported")

        def make(**kwargs):
            pathlib.Path({str(marker)!r}).write_text("called")
    """)
    return _recipe(f"{name}:make"), marker


def _untouched(hostile: tuple[str, Path]) -> None:
    """Neither the factory's module was imported (when it is not os) nor its code run."""
    recipe_yaml, marker = hostile
    assert not marker.exists(), f"code named by a file ran: {marker.read_text()!r}"
    module = yaml.safe_load(recipe_yaml)["model"]["arch"].partition(":")[0]
    assert module == "os" or module not in sys.modules, f"{module}, named by a file, was imported"


# --------------------------------------------------------------------------- every door, every format


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_refuses(fmt: str, hostile: tuple[str, Path], tmp_path: Path) -> None:
    recipe_yaml = hostile[0]
    path = _write(fmt, recipe_yaml, tmp_path / "export")
    with pytest.raises(RecipecError) as info:
        recipec.load(path)
    assert info.value.exit_code == 2
    if fmt in ("safetensors", "torch", "sharded", "index-only"):
        assert isinstance(info.value, UntrustedFactoryError)
        arch = yaml.safe_load(recipe_yaml)["model"]["arch"]
        assert f"--trust-factory {arch}" in str(info.value) and str(path) in str(info.value)
    _untouched(hostile)


def test_the_issues_example_in_a_fresh_process(tmp_path: Path) -> None:
    """`recipec convert X.safetensors Y.onnx` where X's recipe says os:system: exit 2, no command run."""
    import subprocess

    marker = tmp_path / "pwned"
    src = _write("safetensors", _recipe("os:system", {"command": f"touch {marker}"}), tmp_path)
    done = subprocess.run([sys.executable, "-m", "recipec", "convert", str(src), str(tmp_path / "y.onnx")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "--trust-factory os:system" in done.stderr
    assert "Traceback" not in done.stderr and not marker.exists() and not (tmp_path / "y.onnx").exists()


def test_load_of_a_run_directory_refuses(hostile: tuple[str, Path], tmp_path: Path) -> None:
    recipe_yaml = hostile[0]
    _write("safetensors", recipe_yaml, tmp_path / "run")
    with pytest.raises(UntrustedFactoryError):
        recipec.load(tmp_path / "run")
    _untouched(hostile)


@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_to_every_format_runs_nothing(fmt: str, hostile: tuple[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    recipe_yaml = hostile[0]
    src = _write(fmt, recipe_yaml, tmp_path / "export")
    for target in TARGETS:
        dst = tmp_path / "out" / target
        args = ["convert", str(src), str(dst)] + (["--shard-size", "1KB"] if target.endswith(".json") else [])
        code, _, err = run(capsys, *args)
        if target.endswith(".onnx"):  # ONNX rebuilds the model: the file's factory is refused
            assert code == 2 and "--trust-factory" in err and not dst.exists(), err
        else:  # tensors and metadata are copied; nothing is built, and the copy stays refused
            assert code == 0, err
            with pytest.raises(UntrustedFactoryError):
                recipec.load(dst)
    _untouched(hostile)


@pytest.mark.parametrize("fmt", FORMATS)
def test_features_refuses(fmt: str, hostile: tuple[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    recipe_yaml = hostile[0]
    src = _write(fmt, recipe_yaml, tmp_path / "export")
    out = tmp_path / "f.safetensors"
    code, _, err = run(capsys, "features", str(src), "--layers", "0", "--out", str(out))
    assert code == 2 and not out.exists(), err
    assert "Traceback" not in err
    _untouched(hostile)


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_reads_without_building(fmt: str, hostile: tuple[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    recipe_yaml = hostile[0]
    src = _write(fmt, recipe_yaml, tmp_path / "export")
    code, _, err = run(capsys, "inspect", str(src))
    assert code == 0, err  # every layout, ONNX included, is read and shown: nothing is built or imported
    _untouched(hostile)


def test_card_renders_a_hostile_run_without_building(hostile: tuple[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    recipe_yaml = hostile[0]
    run_dir = tmp_path / "run"
    _write("safetensors", recipe_yaml, run_dir)
    _write("torch", recipe_yaml, run_dir)
    (run_dir / "recipe.yaml").write_text(recipe_yaml)
    (run_dir / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 0, "train_loss": 1.0, "val_loss": None, "val_acc": None, "lr": {}, "trainable_groups": ["head"],
         "trainable_params": 1, "seconds": 0.1}) + "\n")
    code, _, err = run(capsys, "card", str(run_dir))
    assert code == 0, err
    assert (run_dir / "README.md").is_file()
    _untouched(hostile)


def test_resume_onto_a_hostile_training_state_runs_nothing(hostile: tuple[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    recipe_yaml = hostile[0]
    run_dir = tmp_path / "run"
    _write("training-state", recipe_yaml, run_dir)
    mine = tmp_path / "mine.yaml"
    mine.write_text(_recipe("tests.tinynets:tiny_cnn", {"width": 4}, name="mine"))
    code, _, err = run(capsys, "build", str(mine), "--out", str(run_dir), "--resume", "--quiet")
    assert code == 2, err
    _untouched(hostile)


def test_source_recipe_reads_only_tensors_of_the_upstream_export(hostile: tuple[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream run is reused (its recipe.yaml is up.yaml resolved) and its export's hostile
    recipe is never built: source transfers tensors only."""
    recipe_yaml = hostile[0]
    monkeypatch.chdir(tmp_path)
    up = tmp_path / "up.yaml"
    up.write_text(_recipe("tests.tinynets:tiny_cnn", {"width": 4}, name="up"))
    upstream_run = tmp_path / "runs" / "up"
    _write("safetensors", recipe_yaml, upstream_run)
    (upstream_run / "recipe.yaml").write_text(dump_recipe(load_recipe(up)))
    down = tmp_path / "down.yaml"
    down.write_text(textwrap.dedent("""\
        name: down
        device: cpu
        model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
        source: {recipe: up.yaml}
        data: {dataset: digits, image_size: 8, per_class: 10}
        train: {epochs: 1}
    """))
    code, out, err = run(capsys, "plan", str(down), "--json")
    assert code == 0, err
    assert json.loads(out)["load_report"]["loaded"]  # the export's tensors were transferred
    _untouched(hostile)


# --------------------------------------------------------------------------- trust, given exactly


@pytest.fixture
def legit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    """(factory name, an export built by it, a file its module writes when imported)."""
    imported = tmp_path / "imported"
    name = _module(tmp_path, monkeypatch, "goodnets", f"""
        import pathlib
        from torch import nn
        pathlib.Path({str(imported)!r}).write_text("yes")

        def small(num_classes=10, width=4):
            return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, num_classes))
    """)
    arch = f"{name}:small"
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    meta = export_metadata(recipe_yaml=_recipe(arch), provenance={})
    export = formats.save(reference.state_dict(), tmp_path / "model.safetensors", metadata=meta)[0]
    return arch, export, imported


def test_an_untrusted_custom_factory_is_refused_before_import(legit: tuple[str, Path, Path]) -> None:
    arch, export, imported = legit
    module = arch.partition(":")[0]
    for trust in ((), [f"{module}:other"], [module], [arch.upper()]):
        with pytest.raises(UntrustedFactoryError, match=f"--trust-factory {arch}"):
            recipec.load(export, trust_factories=trust)
    assert module not in sys.modules and not imported.exists()


def test_a_trusted_custom_factory_loads(legit: tuple[str, Path, Path]) -> None:
    arch, export, imported = legit
    model = recipec.load(export, trust_factories=[arch])
    assert imported.exists()
    state = formats.load(export).state_dict
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model.training
    assert isinstance(recipec.load(export, trust_factories=arch), nn.Module)  # one name as a str
    with pytest.raises(TypeError, match="trust_factories"):
        recipec.load(export, trust_factories=True)  # type: ignore[arg-type]  # never "trust everything"


@pytest.mark.parametrize(("trust", "trusted"), [
    (True, True), (["nets:small"], True), ("nets:small", True), (("x:y", "nets:small"), True),
    ((), False), (False, False), ("nets:small_v2", False), ("nets:smal", False), (["nets"], False),
    (["nets:Small"], False), ([" nets:small"], False),
])
def test_trust_is_by_exact_name(trust: object, trusted: bool) -> None:
    from recipec.model.factory import check_factory_trust

    check_factory_trust("resnet18", ())  # torchvision names need no trust
    if trusted:
        check_factory_trust("nets:small", trust)  # type: ignore[arg-type]
    else:
        with pytest.raises(UntrustedFactoryError, match="--trust-factory nets:small"):
            check_factory_trust("nets:small", trust)  # type: ignore[arg-type]


def test_a_trusted_factory_is_found_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `recipec build` finds it there: the module is beside you, not installed."""
    name = f"cwdnets_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("from torch import nn\n\ndef net(num_classes=10):\n"
                                         "    return nn.Sequential(nn.Flatten(), nn.Linear(192, num_classes))\n")
    torch.manual_seed(0)
    state = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).state_dict()
    export = formats.save(state, tmp_path / "model.safetensors",
                          metadata=export_metadata(recipe_yaml=_recipe(f"{name}:net"), provenance={}))[0]
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path
    model = recipec.load(export, trust_factories=[f"{name}:net"])
    assert torch.equal(model.state_dict()["1.weight"], state["1.weight"])
    assert str(tmp_path) not in sys.path  # only for that import


def test_trust_on_the_command_line(legit: tuple[str, Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    arch, export, imported = legit
    out = tmp_path / "f.safetensors"
    code, _, err = run(capsys, "features", str(export), "--layers", "0", "--out", str(out))
    assert code == 2 and f"--trust-factory {arch}" in err and not out.exists() and not imported.exists()
    code, _, err = run(capsys, "convert", str(export), str(tmp_path / "m.onnx"))
    assert code == 2 and f"--trust-factory {arch}" in err and not imported.exists()
    code, _, err = run(capsys, "features", str(export), "--layers", "0", "--out", str(out),
                       "--trust-factory", "someone.else:net", "--trust-factory", arch)
    assert code == 0, err
    assert formats.load(out).state_dict["0"].shape[1] == 4


@pytest.mark.slow
def test_trusted_convert_to_onnx(legit: tuple[str, Path, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    arch, export, _ = legit
    code, _, err = run(capsys, "convert", str(export), str(tmp_path / "m.onnx"), "--trust-factory", arch)
    assert code == 0 and (tmp_path / "m.onnx").is_file(), err


# --------------------------------------------------------------------------- trusted, yet not a model factory


@pytest.fixture
def shady(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    marker = tmp_path / "pwned"
    name = _module(tmp_path, monkeypatch, "shady", f"""
        import os
        import pathlib
        import subprocess

        run = os.system                 # a builtin, re-exported
        Popen = subprocess.Popen        # a class that is not an nn.Module
        NUMBER = 3

        class Caller:
            def __call__(self, **kwargs):
                pathlib.Path({str(marker)!r}).write_text("called")

        call = Caller()                 # a callable object
    """)
    return name, marker


@pytest.mark.parametrize(("attr", "kwargs", "message"), [
    ("run", {"command": "touch {marker}"}, "is a builtin_function_or_method; a factory must be"),
    ("Popen", {"args": ["touch", "{marker}"]}, "is a class that is not a torch.nn.Module"),
    ("call", {}, "is a Caller; a factory must be"),
    ("NUMBER", {}, "not a callable factory"),
])
def test_trusted_callables_that_are_not_model_factories_are_refused(
        shady: tuple[str, Path], tmp_path: Path, attr: str, kwargs: dict[str, object], message: str) -> None:
    name, marker = shady
    arch = f"{name}:{attr}"
    filled = json.loads(json.dumps(kwargs).replace("{marker}", str(marker)))
    export = formats.save(_state(), tmp_path / "model.safetensors",
                          metadata=export_metadata(recipe_yaml=_recipe(arch, filled), provenance={}))[0]
    with pytest.raises(ModelError, match=message) as info:
        recipec.load(export, trust_factories=[arch])
    assert not isinstance(info.value, UntrustedFactoryError) and info.value.exit_code == 2
    assert not marker.exists()


@pytest.mark.parametrize(("arch", "kwargs"), [
    ("os:system", {"command": "touch {marker}"}),
    ("os:popen", {"cmd": "touch {marker}"}),
    ("subprocess:run", {"args": ["touch", "{marker}"]}),
    ("builtins:exec", {}),
    ("shutil:copyfile", {"src": "/dev/null", "dst": "{marker}"}),
])
def test_trusted_standard_library_callables_are_refused(tmp_path: Path, arch: str, kwargs: dict[str, object]) -> None:
    marker = tmp_path / "pwned"
    filled = json.loads(json.dumps(kwargs).replace("{marker}", str(marker)))
    export = formats.save(_state(), tmp_path / "model.safetensors",
                          metadata=export_metadata(recipe_yaml=_recipe(arch, filled), provenance={}))[0]
    with pytest.raises(ModelError, match="standard library"):
        recipec.load(export, trust_factories=[arch])
    assert not marker.exists()


def test_a_users_own_recipe_naming_a_builtin_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe("os:system", {"command": f"touch {marker}"}, name="r"))
    code, _, err = run(capsys, "plan", str(recipe))
    assert code == 2 and "model.arch" in err and "standard library" in err, err
    assert not marker.exists()



BOMB = "\n".join(["name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
                    f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]) + "\n"


@pytest.mark.parametrize("text", [
    BOMB,                                              # "billion laughs": 10**9 values once expanded
    "name: &a [*a]\n",                                  # an alias inside itself
    "name: !!python/object/apply:os.system [echo]\n",  # a tag
    "[" * 5000 + "]" * 5000,                           # nested past the recursion limit
])
def test_an_embedded_recipe_is_read_with_a_recipe_files_limits(tmp_path: Path, text: str) -> None:
    path = formats.save(_state(), tmp_path / "model.safetensors",
                        metadata=export_metadata(recipe_yaml=text, provenance={}))[0]
    with pytest.raises(recipec.errors.CheckpointError, match="embedded recipe is not valid"):
        recipec.load(path)
