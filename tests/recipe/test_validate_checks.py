"""`recipec validate` finds what `plan` used to find alone, torch-free: unknown architectures (with the
nearest names), paths that are not there; each located, exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipec.cli import main
from recipec.recipe import archs
from recipec.recipe.arch_names import TORCHVISION_CLASSIFIERS, TORCHVISION_OTHERS
from recipec.recipe.archs import arch_problem

ROOT = Path(__file__).resolve().parents[2]


def validate(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path), *args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), err.splitlines() or out.splitlines()


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_shipped_names_are_torchvisions():
    import torchvision.models as models

    assert tuple(models.list_models(module=models)) == TORCHVISION_CLASSIFIERS
    assert {kind: tuple(models.list_models(module=getattr(models, kind))) for kind in TORCHVISION_OTHERS} == \
        TORCHVISION_OTHERS
    assert sorted(TORCHVISION_CLASSIFIERS + sum(TORCHVISION_OTHERS.values(), ())) == sorted(models.list_models())


def test_timm_names_read_from_its_files_are_timms():
    timm = pytest.importorskip("timm")
    assert archs._timm_names() == frozenset(timm.list_models())


@pytest.mark.parametrize(("arch", "line"), [
    ("resnet181", "model.arch: unknown architecture 'resnet181'; did you mean 'resnet18' or"),
    ("resnet-18", "model.arch: unknown architecture 'resnet-18'; did you mean 'resnet18'?"),
    ("ResNet18", "model.arch: unknown architecture 'ResNet18'; did you mean 'resnet18'?"),
    ("convnext_atto", "model.arch: unknown architecture 'convnext_atto'; did you mean 'timm/convnext_atto'?"),
    ("frobnet", "model.arch: unknown architecture 'frobnet' (model.arch is a torchvision classification model"),
    ("fasterrcnn_resnet50_fpn", "model.arch: 'fasterrcnn_resnet50_fpn' is a torchvision detection model; recipec "
                                "fine-tunes image classifiers"),
    ("timm/resnet-18", "model.arch: unknown timm architecture 'resnet-18'; did you mean 'timm/resnet18'?"),
    ("timm/convnext_atto.d2_in1k", "model.arch: timm/convnext_atto.d2_in1k: the pretrained tag goes in model.weights, "
                                   "not after a dot: write arch: timm/convnext_atto and weights: d2_in1k"),
])
def test_an_unknown_architecture_is_located_with_the_nearest_names(tmp_path, capsys, arch, line):
    if arch.startswith("timm/") or arch == "convnext_atto":
        pytest.importorskip("timm")
    path = recipe(tmp_path, f"""\
        name: r
        model:
          arch: {arch}
          head: {{num_classes: 3}}
    """)
    code, lines = validate(capsys, path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}:3:9: {line}"), lines[0]
    if arch == "frobnet":
        assert "timm/<name> for a timm model" in lines[0]


def test_an_unknown_timm_name_asks_timm_itself():
    pytest.importorskip("timm")
    assert arch_problem("timm/resnet181") is not None and "did you mean 'timm/resnet18'" in arch_problem("timm/resnet181")


def test_without_timm_the_hint_says_how_to_install(monkeypatch):
    monkeypatch.setattr(archs, "_timm_names", lambda: None)
    problem = arch_problem("convnext_atto")
    assert problem is not None and "pip install 'recipec[timm]'" in problem and "timm/<name>" in problem


@pytest.mark.parametrize("arch", ["resnet18", "vit_b_16", "timm/convnext_atto", "mypackage.nets:make_net"])
def test_known_names_and_factories_pass(arch):
    if arch.startswith("timm/"):
        pytest.importorskip("timm")
    assert arch_problem(arch) is None


def test_paths_that_are_not_there_are_located(tmp_path, capsys):
    path = recipe(tmp_path, """\
        name: r
        model: {arch: resnet18, head: {num_classes: 3}}
        source: {checkpoint: weights/backbone.pt}
        data:
          dataset: imagefolder
          root: data/pets
        card: {template: card.md.j2}
    """)
    code, lines = validate(capsys, path)
    assert code == 2
    assert lines == [
        f"error: {path}:3:22: source.checkpoint: no such file {tmp_path}/weights/backbone.pt (a .pt/.pth/.bin/.ckpt, "
        ".safetensors, .onnx or *.index.json file, or a DCP directory)",
        f"error: {path}:6:9: data.root: {tmp_path}/data/pets does not exist (dataset imagefolder needs root/<class>/<image>)",
        f"error: {path}:7:18: card.template: no such template file {tmp_path}/card.md.j2; give an existing Jinja2 file "
        "or remove card.template for the shipped card",
    ]
    (tmp_path / "data" / "pets").mkdir(parents=True)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.pt").write_bytes(b"")
    (tmp_path / "card.md.j2").write_text("{{ name }}")
    assert validate(capsys, path) == (0, [f"{path}: ok"])


def test_a_path_an_override_wrote_is_blamed_on_it(tmp_path, capsys):
    path = recipe(tmp_path, "name: r\nmodel: {arch: resnet18, head: {num_classes: 3}}\n")
    code, lines = validate(capsys, path, "--set", "data.dataset=manifest", "--set", "data.root=nowhere.csv")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: --set data.root=nowhere.csv: data.root: no such manifest file"), lines[0]


def test_both_kinds_of_problem_at_once_and_torch_free(tmp_path):
    path = recipe(tmp_path, """\
        model: {arch: resnet181, head: {num_classes: 3}}
        data: {dataset: imagefolder, root: nowhere}
    """)
    code = ("import sys; from recipec.cli import main\n"
            "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit as e:\n    assert e.code == 2, e.code\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "model.arch: unknown architecture 'resnet181'" in result.stderr and "data.root:" in result.stderr
