"""recipec convert: formats, dtypes, shards, training states, ONNX, and refusals that write nothing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import recipec
from recipec.pipeline.build import build
from recipec.provenance import PROVENANCE_KEY, RECIPE_KEY
from recipec.convert.checkpoint import CONVERTED_FROM_KEY, convert
from recipec.errors import CheckpointError, ExportError
from recipec.recipe.load import load_recipe
from recipec.weights import formats, raw

TINY = ("tests.tinynets:tiny_cnn",)  # the runs' own factory, trusted where a file's recipe rebuilds it
RECIPE = """\
    name: tiny-convert
    seed: 0
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
    groups:
      - {name: body, match: ['^[0134]\\.']}
      - {name: head, match: ['^8\\.']}
    freeze: {trainable: [body, head]}
    data: {dataset: digits, image_size: 8, per_class: 10, batch_size: 64}
    train: {epochs: 1}
    export: {formats: [safetensors, torch], onnx: {atol: 1.0e-5}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("convert")
    (root / "tiny.yaml").write_text(textwrap.dedent(RECIPE))
    return build(load_recipe(root / "tiny.yaml"), out=root / "run")


@pytest.fixture(scope="module")
def onnx_file(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert convert(run / "model.safetensors", dst, trust_factories=TINY) == [dst]
    return dst


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _sha256(path: Path) -> str:
    return raw.sha256(path)


def test_safetensors_torch_safetensors_round_trip(run: Path, tmp_path: Path) -> None:
    src = run / "model.safetensors"
    assert convert(src, tmp_path / "model.pt") == [tmp_path / "model.pt"]
    assert convert(tmp_path / "model.pt", tmp_path / "again.safetensors") == [tmp_path / "again.safetensors"]
    original, again = formats.load(src), formats.load(tmp_path / "again.safetensors")
    assert _equal(original.state_dict, again.state_dict)
    for key in (RECIPE_KEY, PROVENANCE_KEY, "format"):
        assert again.metadata[key] == original.metadata[key]
    assert json.loads(again.metadata[CONVERTED_FROM_KEY]) == {
        "file": "model.pt", "sha256": _sha256(tmp_path / "model.pt"), "format": "torch"}
    # The torch file is plain data a weights-only load reads, and carries the same metadata.
    plain = torch.load(tmp_path / "model.pt", weights_only=True)
    assert plain["recipec_metadata"][RECIPE_KEY] == original.metadata[RECIPE_KEY]
    assert json.loads(plain["recipec_metadata"][CONVERTED_FROM_KEY])["sha256"] == _sha256(src)
    assert isinstance(recipec.load(tmp_path / "again.safetensors", trust_factories=TINY), torch.nn.Module)


def test_float16_cast_leaves_integers(run: Path, tmp_path: Path) -> None:
    convert(run / "model.safetensors", tmp_path / "half.safetensors", dtype="float16")
    original = formats.load_state_dict(run / "model.safetensors")
    half = formats.load_state_dict(tmp_path / "half.safetensors")
    counters = [k for k in half if k.endswith("num_batches_tracked")]
    assert counters and all(torch.equal(half[k], original[k]) and half[k].dtype == torch.int64 for k in counters)
    for key, tensor in half.items():
        if key not in counters:
            assert tensor.dtype == torch.float16 and torch.equal(tensor, original[key].half())


def test_tied_weights_stay_tied_through_a_cast(tmp_path: Path) -> None:
    shared = torch.randn(5, 3)
    formats.save({"emb.weight": shared, "head.weight": shared}, tmp_path / "tied.safetensors")
    convert(tmp_path / "tied.safetensors", tmp_path / "half.safetensors", dtype="bfloat16")
    with open(tmp_path / "half.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert set(header) == {"emb.weight", "__metadata__"}  # stored once
    assert header["__metadata__"]["head.weight"] == "emb.weight"
    assert torch.equal(formats.load_state_dict(tmp_path / "half.safetensors")["head.weight"], shared.bfloat16())


def test_sharded_output_has_an_index(run: Path, tmp_path: Path) -> None:
    written = convert(run / "model.pt", tmp_path / "model.safetensors", shard_size="1KB")
    index = tmp_path / "model.safetensors.index.json"
    assert written[-1] == index and len(written) > 2
    assert [p.name for p in written[:-1]] == [f"model-{i:05d}-of-{len(written) - 1:05d}.safetensors"
                                              for i in range(1, len(written))]
    loaded = formats.load(index)
    assert _equal(loaded.state_dict, formats.load_state_dict(run / "model.pt"))
    assert loaded.metadata[RECIPE_KEY] == formats.read_metadata(run / "model.safetensors")[RECIPE_KEY]
    assert set(json.loads(index.read_text())["weight_map"]) == set(loaded.state_dict)


def test_training_state_becomes_a_self_describing_export(run: Path, tmp_path: Path) -> None:
    last = run / "checkpoints" / "last.pt"
    convert(last, tmp_path / "weights.safetensors")
    state = torch.load(last, weights_only=True)
    converted = formats.load(tmp_path / "weights.safetensors")
    assert _equal(converted.state_dict, {k: v for k, v in state["model"].items()})
    assert converted.metadata[RECIPE_KEY] == state["recipe"]
    assert json.loads(converted.metadata[PROVENANCE_KEY])["epochs_trained"] == 1
    assert not {"rng", "optimizer", "history"} & set(converted.metadata)  # resume-only state stays behind
    model = recipec.load(tmp_path / "weights.safetensors", trust_factories=TINY)
    reference = recipec.load(run / "model.safetensors", trust_factories=TINY)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), reference(x))


def test_export_to_onnx_from_its_embedded_recipe(run: Path, onnx_file: Path) -> None:
    proto = onnx.load(str(onnx_file))
    props = {p.key: p.value for p in proto.metadata_props}
    source_meta = formats.read_metadata(run / "model.safetensors")
    assert props[RECIPE_KEY] == source_meta[RECIPE_KEY] and props[PROVENANCE_KEY] == source_meta[PROVENANCE_KEY]
    assert json.loads(props[CONVERTED_FROM_KEY])["sha256"] == _sha256(run / "model.safetensors")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    model = recipec.load(run / "model.safetensors", trust_factories=TINY)
    x = torch.randn(3, 3, 8, 8)
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-5)
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx"]  # no temp files left


def test_foreign_state_dict_needs_a_recipe_for_onnx(run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save(dict(formats.load_state_dict(run / "model.safetensors")), foreign)
    with pytest.raises(CheckpointError, match="carries no recipe, so the architecture is unknown; pass --recipe") as info:
        convert(foreign, tmp_path / "foreign.onnx")
    assert info.value.exit_code == 2 and not (tmp_path / "foreign.onnx").exists()
    convert(foreign, tmp_path / "foreign.onnx", recipe=run / "recipe.yaml")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "foreign.onnx")).metadata_props}
    assert props[RECIPE_KEY] == (run / "recipe.yaml").read_text()


def test_recipe_that_does_not_fit_names_the_tensors(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text((run / "recipe.yaml").read_text().replace("num_classes: 10", "num_classes: 5"))
    with pytest.raises(CheckpointError, match=r"'8\.weight' has shape \[10, 8\], but tests.tinynets:tiny_cnn has \[5, 8\]"):
        convert(run / "model.safetensors", tmp_path / "m.safetensors", recipe=other)
    assert list(tmp_path.iterdir()) == [other]


def test_parity_failure_writes_no_onnx(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = ort.InferenceSession.run

    def drifting_run(self: ort.InferenceSession, *args: object, **kwargs: object) -> list[np.ndarray]:
        return [out + 1e-3 for out in real_run(self, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", drifting_run)
    with pytest.raises(ExportError, match=r"m\.onnx: ONNX parity check failed: .* up to 0\.001, beyond atol 1e-05") as info:
        convert(run / "model.safetensors", tmp_path / "m.onnx", trust_factories=TINY)
    assert info.value.exit_code == 1 and list(tmp_path.iterdir()) == []


def test_unknown_suffix_needs_to(run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"suffix '\.weights'; pass --to torch \| safetensors \| onnx"):
        convert(run / "model.safetensors", tmp_path / "model.weights")
    assert convert(run / "model.safetensors", tmp_path / "model.weights", to="safetensors") == [tmp_path / "model.weights"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.weights"]
    assert _equal(formats.load_state_dict(tmp_path / "model.weights"), formats.load_state_dict(run / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"suffix '\.pt' says torch, but --to says safetensors"):
        convert(run / "model.safetensors", tmp_path / "model.pt", to="safetensors")


def test_source_is_never_overwritten(tmp_path: Path) -> None:
    src, index = tmp_path / "model.safetensors", tmp_path / "model.safetensors.index.json"
    formats.save({"a": torch.ones(300), "b": torch.zeros(300)}, index, shard_size=1200)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match="is the source checkpoint itself"):
        convert(index, index, shard_size=100)
    # Writing model.safetensors beside the index would remove the source's index and shards.
    with pytest.raises(CheckpointError, match="would replace or remove the source file"):
        convert(index, src)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bad_inputs_write_nothing(run: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases = [
        (tmp_path / "missing.pt", tmp_path / "a.safetensors", {}, "no such file"),
        (corrupt, tmp_path / "a.pt", {}, "corrupt"),
        (run / "model.safetensors", tmp_path / "a.onnx", {"dtype": "float16"}, "written in float32"),
        (run / "model.safetensors", tmp_path / "a.pt", {"shard_size": "1MB"}, "shards are written as safetensors"),
        (run / "model.safetensors", tmp_path / "a.safetensors", {"shard_size": "lots"}, "not a size"),
        (run / "model.safetensors", tmp_path / "a.pt", {"dtype": "int8"}, "expected one of float16"),
    ]
    for src, dst, options, message in cases:
        with pytest.raises(CheckpointError, match=message):
            convert(src, dst, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.safetensors"]
