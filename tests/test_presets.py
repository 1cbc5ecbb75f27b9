"""`source.preset` in a recipe and `recipec presets`: the mapping end to end, located errors, a torch-free listing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recipec.cli import main
from recipec.compiler.compile import compile_recipe
from recipec.recipe.load import load_recipe
from recipec.recipe.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, mlp_ratio: 2}"


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_presets_lists_every_preset_with_what_it_maps(capsys):
    code, out, err = run(capsys, "presets")
    assert (code, err) == (0, "")
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks[:-1]] == list(PRESETS)
    hf_vit = blocks[0].splitlines()
    assert hf_vit[1] == f"    from  {PRESETS['hf_vit_to_timm'].source}"
    assert hf_vit[2] == f"    to    {PRESETS['hf_vit_to_timm'].target}"
    assert " ".join(line.strip() for line in hf_vit[3:]) == PRESETS["hf_vit_to_timm"].description


def test_presets_imports_no_torch():
    code = ("import sys; from recipec.cli import main\n"
            "try:\n    main(['presets'])\nexcept SystemExit as e:\n    assert not e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def hf_vit(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("timm")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        layer_norm_eps=1e-6)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf" / "model.safetensors"


def _recipe(tmp_path: Path, source: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: hfvit
        device: cpu
        model: {{arch: timm/vit_tiny_patch16_224, kwargs: {TINY_VIT}, head: {{num_classes: 10}}}}
        source:
        """) + textwrap.indent(textwrap.dedent(source), "  "))
    return path


def test_a_recipe_loads_hugging_face_vit_weights_into_timm_through_the_preset(hf_vit, tmp_path, capsys):
    hf, checkpoint = hf_vit
    path = _recipe(tmp_path, f"""\
        checkpoint: {checkpoint}
        preset: hf_vit_to_timm
        """)
    compiled = compile_recipe(load_recipe(path))
    report = compiled.reports["source"]
    assert report.new == ["head.bias", "head.weight"] and report.missing == [] and report.unexpected == []
    assert [e["key"] for e in report.excluded] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert {a["key"] for a in report.adapted} == {f"blocks.{i}.attn.qkv.{w}" for i in (0, 1) for w in ("weight", "bias")}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (compiled.model.forward_features(x) - hf(pixel_values=x).last_hidden_state).abs().max() <= 1e-4
    code, out, _ = run(capsys, "plan", str(path))
    assert code == 0
    assert ("  adapted     blocks.1.attn.qkv.bias: fuse [32] + [32] + [32] -> [96] along dim 0 from "
            "encoder.layer.1.attention.attention.query.bias + encoder.layer.1.attention.attention.key.bias + "
            "encoder.layer.1.attention.attention.value.bias") in out.splitlines()


def test_a_fuse_that_misses_a_part_is_a_located_error(hf_vit, tmp_path, capsys):
    _, checkpoint = hf_vit
    path = _recipe(tmp_path, f"""\
        checkpoint: {checkpoint}
        preset: hf_vit_to_timm
        adapt:
          - {{fuse: ['(.*)\\.mlp\\.fc1\\.weight', '\\1.mlp.gate.weight'], into: '\\1.mlp.fc1.weight'}}
        """)
    code, _, err = run(capsys, "plan", str(path))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: {path}:8:7: source.adapt.0: fuse into 'blocks.0.mlp.fc1.weight': part 'blocks.0.mlp.gate.weight' "
        "(with 'blocks.0.mlp.fc1.weight') is not among the renamed source keys; rename a source key onto it "
        "(source.rename) or fix the template",
        f"error: {path}:8:7: source.adapt.0: fuse into 'blocks.1.mlp.fc1.weight': part 'blocks.1.mlp.gate.weight' "
        "(with 'blocks.1.mlp.fc1.weight') is not among the renamed source keys; rename a source key onto it "
        "(source.rename) or fix the template"]


def test_the_wrong_preset_is_located_at_source_preset(hf_vit, tmp_path, capsys):
    _, checkpoint = hf_vit
    path = _recipe(tmp_path, f"""\
        checkpoint: {checkpoint}
        preset: hf_clip_vision_to_timm
        """)
    code, _, err = run(capsys, "plan", str(path))
    assert code == 2
    assert err.splitlines()[0] == (
        f"error: {path}:6:11: source.preset: hf_clip_vision_to_timm renames none of the source keys: it reads "
        f"{PRESETS['hf_clip_vision_to_timm'].source}, but source keys look like: embeddings.cls_token, "
        "embeddings.patch_embeddings.projection.bias, embeddings.patch_embeddings.projection.weight, ...")
