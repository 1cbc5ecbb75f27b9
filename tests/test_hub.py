"""``export.formats: [hub]`` and ``recipec push``: RUN/hub/ loads in timm, transformers and plain torchvision with the
run's logits and preprocessing, its card is a Hub card, recipec loads it (and any timm hub folder), and push
uploads it to a local stand-in of the Hub's API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import recipec
from recipec.errors import DatasetError, UntrustedFactoryError
from recipec.pipeline.build import build
from recipec.pipeline.checks import check_inputs
from recipec.recipe.load import load_recipe
from tests.hubserver import FakeHub
from tests.model.timmhub import go_offline, stand_in
from tests.tinyrecipes import run_cli

timm = pytest.importorskip("timm")  # an optional extra
huggingface_hub = pytest.importorskip("huggingface_hub")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_recipec_test"


def _recipe(folder: Path, body: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "r.yaml").write_text(textwrap.dedent(body))
    return load_recipe(folder / "r.yaml")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet10t from (stand-in) pretrained weights: its bicubic shorter-side resize; a linear head with dropout."""
    root = tmp_path_factory.mktemp("timm-hub")
    with pytest.MonkeyPatch.context() as mp:
        home, _ = go_offline(root, mp)
        stand_in(home, "resnet10t", "c3_in1k")
        recipe = _recipe(root, """\
            name: digits-resnet10t
            device: cpu
            model: {arch: timm/resnet10t, weights: c3_in1k, head: {num_classes: 10, dropout: 0.2}}
            freeze: {trainable: [head]}
            optimizer: {name: adamw, lr: 0.01}
            data: {dataset: digits, image_size: 32, per_class: 3, val_fraction: 0.05, batch_size: 30}
            train: {epochs: 1}
            export: {formats: [safetensors, hub]}
            card: {license: apache-2.0, tags: [digits]}
            """)
        return build(recipe, out=root / "run", log=None)


@pytest.fixture(scope="module")
def tv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision resnet18 from random weights (the square resize), a linear head with dropout; no safetensors export."""
    root = tmp_path_factory.mktemp("tv-hub")
    recipe = _recipe(root, """\
        name: digits-resnet18
        device: cpu
        model: {arch: resnet18, weights: null, head: {num_classes: 10, dropout: 0.3}}
        freeze: {trainable: [head]}
        data: {dataset: digits, image_size: 32, per_class: 2, val_fraction: 0.05, batch_size: 20}
        train: {epochs: 1}
        export: {formats: [torch, hub]}
        """)
    return build(recipe, out=root / "run", log=None)


def _images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((50, 41), (32, 32), (29, 64))]


# --------------------------------------------------------------------------- timm


_FRESH = """
import json, sys
from pathlib import Path
import numpy as np, timm, torch
from PIL import Image
import recipec

hub, run = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.RandomState(0)
images = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((50, 41), (32, 32), (29, 64))]
run_transform = recipec.load_predictor(run / "model.safetensors").transform   # the run's eval preprocessing
batch = torch.stack([run_transform(im) for im in images])
model = timm.create_model(f"local-dir:{hub}", pretrained=True).eval()
timm_transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
out = {"transform": max((timm_transform(im) - run_transform(im)).abs().max().item() for im in images)}
with torch.inference_mode():
    reference = recipec.load(run / "model.safetensors")(batch)
    out["timm"] = (model(batch) - reference).abs().max().item()
    out["recipec_hub"] = (recipec.load(hub)(batch) - reference).abs().max().item()
    out["labels_timm"] = list(model.pretrained_cfg["label_names"])
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        out["transformers"] = None
    else:
        hf = AutoModelForImageClassification.from_pretrained(str(hub)).eval()
        out["transformers"] = (hf(batch).logits - reference).abs().max().item()
        out["id2label"] = [hf.config.id2label[i] for i in range(len(hf.config.id2label))]
print(json.dumps(out))
"""


def test_timm_folder_loads_in_timm_and_transformers_with_the_runs_logits(timm_run: Path) -> None:
    hub = timm_run / "hub"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_HOME": str(timm_run.parent / "fresh")}
    result = subprocess.run([sys.executable, "-c", _FRESH, str(hub), str(timm_run)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["timm"] <= 1e-5 and found["recipec_hub"] <= 1e-5, found
    assert found["transform"] <= 1e-6, found   # timm's transform from the folder is the run's eval transform
    classes = [str(i) for i in range(10)]
    assert found["labels_timm"] == classes
    if found["transformers"] is not None:       # the test extra installs transformers
        assert found["transformers"] <= 1e-5 and found["id2label"] == classes, found


def test_timm_folder_holds_timms_layout(timm_run: Path) -> None:
    hub = timm_run / "hub"
    config = json.loads((hub / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 10
    assert config["num_features"] == 512 and config["global_pool"] == "avg"
    assert config["label_names"] == [str(i) for i in range(10)]
    assert "num_classes" not in config["model_args"]   # transformers' TimmWrapper passes num_classes itself
    cfg = config["pretrained_cfg"]
    assert {k: cfg[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode", "classifier", "first_conv")} == {
        "input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
        "classifier": "fc", "first_conv": "conv1.0"}
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert "test_input_size" not in cfg   # the source weights' 224 px test size is not this model's
    assert "fc.weight" in load_file(hub / "model.safetensors")   # the dropout head keeps timm's own keys
    assert os.path.samefile(hub / "model.safetensors", timm_run / "model.safetensors")   # a hard link, not a copy
    for name in ("README.md", "curves.png", "plan.png", "recipe.yaml"):
        assert (hub / name).is_file(), name


def test_timm_card_is_a_hub_card(timm_run: Path) -> None:
    card = huggingface_hub.ModelCard.load(timm_run / "hub" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-classification"
    assert data["base_model"] == "timm/resnet10t.c3_in1k" and data["license"] == "apache-2.0"
    assert {"recipec", "digits", "timm"} <= set(data["tags"]) and data["datasets"] == ["digits"]
    assert data["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    assert huggingface_hub.ModelCardData(**data).to_dict() == data   # round-trips
    text = card.text
    assert 'timm.create_model("local-dir:path/to/hub", pretrained=True)' in text
    assert "AutoModelForImageClassification.from_pretrained" in text and "recipec.load_predictor" in text


# --------------------------------------------------------------------------- torchvision


def test_torchvision_folder_loads_in_plain_torchvision(tv_run: Path) -> None:
    import torchvision

    hub = tv_run / "hub"
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(load_file(hub / "model.safetensors"), strict=True)
    predictor = recipec.load_predictor(hub)
    batch = torch.stack([predictor.transform(im) for im in _images()])
    with torch.inference_mode():
        reference = recipec.load(tv_run / "model.pt")(batch)
        assert (model.eval()(batch) - reference).abs().max() <= 1e-5
        assert torch.equal(predictor.logits(batch), reference)
    config = json.loads((hub / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["label_names"] == predictor.classes
    assert config["preprocessing"] == dict(predictor.preprocessing)
    assert os.path.samefile(hub / "model.pt", tv_run / "model.pt")   # the other exports are linked in


def test_torchvision_card_shows_torchvision_and_recipec_and_its_transform_is_the_runs(tv_run: Path) -> None:
    from torchvision.transforms import v2

    card = huggingface_hub.ModelCard.load(tv_run / "hub" / "README.md")
    assert card.data.library_name == "pytorch" and card.data.base_model is None   # no Hub model to name
    text = card.text
    assert "model = torchvision.models.resnet18(num_classes=10)" in text and "recipec.load_predictor" in text
    code = text.split("transform = v2.Compose(", 1)[1].split("])", 1)[0]
    transform = eval("v2.Compose(" + code + "])", {"v2": v2, "torch": torch})   # the card's own line
    predictor = recipec.load_predictor(tv_run / "hub")
    for image in _images():
        assert (transform(image) - predictor.transform(image)).abs().max() <= 1e-6


def test_eval_results_reach_the_hub_card(tv_run: Path, tmp_path: Path, capsys) -> None:
    """``recipec eval RUN/hub`` evaluates the folder's weights into the run (RUN/eval/) and re-renders both cards:
    the hub card's model-index has the result, and the file it links is beside it."""
    run = Path(shutil.copytree(tv_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints")))
    code, _, err = run_cli(["eval", str(run / "hub"), "--split", "val"], capsys)
    assert code == 0, err
    written = json.loads((run / "eval" / "val.json").read_text())
    card = huggingface_hub.ModelCard.load(run / "hub" / "README.md")
    result = card.data.to_dict()["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "validation" and result["dataset"]["args"]["num_examples"] == written["n"]
    assert abs(card.data.eval_results[0].metric_value - written["accuracy"]) < 1e-3   # 4 significant digits
    assert (run / "hub" / "eval" / "val.json").read_bytes() == (run / "eval" / "val.json").read_bytes()


# --------------------------------------------------------------------------- recipec loads hub folders


def test_recipec_loads_a_foreign_timm_hub_folder(tmp_path: Path, capsys) -> None:
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).eval()
    save_for_hf(model, str(tmp_path), model_config={"label_names": ["cat", "dog", "fox"]}, safe_serialization=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(recipec.load(tmp_path)(x), model(x))
    predictor = recipec.load_predictor(tmp_path)
    assert predictor.classes == ["cat", "dog", "fox"] and predictor.recipe is None
    timm_transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))  # 176 px, crop 0.875
    for image in _images():
        assert (predictor.transform(image) - timm_transform(image)).abs().max() <= 1e-6
    assert predictor.predict(_images()[0], top_k=1)[0]["class"] in predictor.classes
    code, _, err = run_cli(["eval", str(tmp_path)], capsys)   # no recipe: no data to evaluate on
    assert code == 2 and "carries no recipec recipe" in err


@pytest.mark.parametrize("arch", ["recipec_evil_module_x:build", "recipec_evil_module_x.build", "timm/resnet10t"])
def test_an_architecture_that_names_code_is_refused_before_import(tmp_path: Path, capsys, arch: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 2,
                                                      "pretrained_cfg": {"input_size": [3, 32, 32]}}))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(UntrustedFactoryError, match="not a timm model name"):
        recipec.load(tmp_path)
    assert "recipec_evil_module_x" not in sys.modules
    _images()[0].save(tmp_path / "a.png")
    code, _, err = run_cli(["predict", str(tmp_path), str(tmp_path / "a.png")], capsys)
    assert code == 2 and "config.json is data" in err


def test_a_model_no_library_loads_is_refused_before_training(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, """\
        name: t
        model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
        data: {dataset: digits, image_size: 8}
        export: {formats: [hub]}
        """)
    with pytest.raises(DatasetError, match="export.formats: .*your own factory"):
        check_inputs(recipe)
    recipe = _recipe(tmp_path, """\
        name: t
        model: {arch: resnet18, weights: null, head: {num_classes: 10, type: mlp, hidden: [8]}}
        data: {dataset: digits, image_size: 8}
        export: {formats: [safetensors, hub]}
        """)
    with pytest.raises(DatasetError, match="export.formats: an mlp head is recipec's"):
        check_inputs(recipe)


# --------------------------------------------------------------------------- recipec push


def _push(run: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "recipec", "push", str(run), *args], capture_output=True, text=True,
                          env=clean | {"NO_PROXY": "127.0.0.1", "PYTHONPATH": str(ROOT)} | env, cwd=ROOT, timeout=300)


def test_push_uploads_every_file_of_the_folder(timm_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(timm_run, tmp_path / "run"))
    with FakeHub(TOKEN) as hub:
        result = _push(run, "me/digits", "--private", "--commit-message", "first",
                       env={"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{hub.url}/me/digits/commit/{1:040x}"
        sent = hub.files[("me/digits", "main")]
        assert hub.repos["me/digits"]["visibility"] == "private" and hub.commits[0]["header"]["summary"] == "first"
    folder = run / "hub"
    here = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert sorted(sent) == sorted(here) and all(sent[name] == here[name] for name in here)
    assert 'timm.create_model("hf-hub:me/digits", pretrained=True)' in here["README.md"].decode()   # it names its repo


def test_push_refuses_a_missing_token_a_bad_card_and_a_run_without_hub(timm_run: Path, tv_run: Path,
                                                                       tmp_path: Path) -> None:
    with FakeHub(TOKEN) as hub:
        base = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        no_token = _push(timm_run, "me/digits", env=base)
        assert no_token.returncode == 2 and "error: no Hugging Face token: set HF_TOKEN" in no_token.stderr
        run = Path(shutil.copytree(tv_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints")))
        readme = run / "hub" / "README.md"
        readme.write_text(readme.read_text().replace("pipeline_tag: image-classification", "pipeline_tag: [oops"))
        bad_card = _push(run, "me/digits", env=base | {"HF_TOKEN": TOKEN})
        assert bad_card.returncode == 2 and "README.md: the card does not parse" in bad_card.stderr
        shutil.rmtree(run / "hub")
        no_hub = _push(run, "me/digits", env=base | {"HF_TOKEN": TOKEN})
        assert no_hub.returncode == 2 and "has no hub folder" in no_hub.stderr
        assert hub.requests == []   # refused before anything was sent
    for result in (no_token, bad_card, no_hub):
        assert "Traceback" not in result.stderr


def test_push_without_huggingface_hub_says_how_to_install_it(tv_run: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)   # import huggingface_hub raises ImportError
    monkeypatch.setitem(sys.modules, "huggingface_hub.errors", None)
    code, _, err = run_cli(["push", str(tv_run), "me/digits"], capsys)
    assert code == 2 and "recipec push needs huggingface_hub" in err and "pip install 'recipec[hub]'" in err
