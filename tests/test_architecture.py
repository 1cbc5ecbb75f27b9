"""The layers of recipec, read from the code: no import cycle, no upward import, no borrowed private name.

Every ``import`` and ``from ... import`` of a recipec module counts, at the top of a module or
inside a function (only ``if TYPE_CHECKING:`` blocks, which never run, are left out). The layers,
lowest first; a module may import its own package and the layers below it, nothing above and no
peer of its own layer:

====  ==========================================================================================
0     the base: errors, _version, _files, _atomic, _json, _terminal, device, progress, provenance
1     recipe/      the language (torch-free)
2     weights/     checkpoints, key mapping, adaptation, inspect
3     model/       model families, heads, groups, pretrained weights
4     data/        datasets, splits, transforms, loaders
5     train/       freezing, optimizer, schedule, loop, losses, tasks, training state
6     compiler/    the crossing: Recipe -> plain configs, the compiled model, the plan
7     inference/   restore, Predictor, predict
8     card/        the model card
9     convert/, tracking/   (peers: neither imports the other)
10    pipeline/    build phases, run directory, checks, upstream, resume, eval, lr-find, features
11    commands/    the command line's commands
12    cli, __main__, the package itself
====  ==========================================================================================
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "recipec"

LAYERS: list[tuple[str, ...]] = [
    ("recipec.errors", "recipec._version", "recipec._files", "recipec._atomic", "recipec._json", "recipec._terminal",
     "recipec.device", "recipec.progress", "recipec.provenance"),
    ("recipec.recipe",),
    ("recipec.weights",),
    ("recipec.model",),
    ("recipec.data",),
    ("recipec.train",),
    ("recipec.compiler",),
    ("recipec.inference",),
    ("recipec.card",),
    ("recipec.convert", "recipec.tracking"),
    ("recipec.pipeline",),
    ("recipec.commands",),
    ("recipec.cli", "recipec.__main__", "recipec"),
]
# where an import inside a function is allowed: the torch-free entry points (``recipec card`` re-renders a
# card without torch, so the card reads exports through function-level imports)
LAZY_ALLOWED = ("recipec", "recipec.cli", "recipec.commands", "recipec.recipe", "recipec.card.context")
# and these imports inside functions, each for a start-up cost users feel (measured whole-process)
LAZY_EDGES = {
    ("recipec.convert.checkpoint", "recipec.convert.tensors"): "torch (~1.4 s): only where bytes cannot just be copied",
    ("recipec.convert.tensors", "recipec.convert.onnx"): "torchvision (~1.2 s): only when an architecture is rebuilt",
    ("recipec.convert.checkpoint", "recipec.model.factory"): "torchvision (~1.2 s): only for --trust-factory names",
    ("recipec.convert.checkpoint", "recipec.recipe.load"): "pydantic (~0.2 s): only with --recipe",
    ("recipec.convert.checkpoint", "recipec.recipe.spec"): "pydantic (~0.2 s): only with --shard-size",
    ("recipec.convert.checkpoint", "recipec.convert.pt2"): "torch (~1.4 s): only for a .pt2 source",
    ("recipec.convert.checkpoint", "recipec.convert.quantize"): "onnxruntime: only with --quantize",
    ("recipec.convert.metadata", "recipec.recipe._yaml"): "pydantic (~0.2 s): only for a source carrying a recipe",
    ("recipec.convert.metadata", "recipec.recipe.load"): "pydantic (~0.2 s): only for a source carrying a recipe",
}
MAX_ROOT_MODULES = 12
MAX_PARAMETERS = 8
# public functions whose keyword arguments are a command's flags, one for one (the click commands are exempt alike)
MANY_FLAGS = {"recipec.pipeline.features.features": "recipec features: one keyword per flag",
              "recipec.pipeline.build.build": "recipec build: one keyword per flag (--out, --resume, --overwrite, ...)",
              "recipec.convert.checkpoint.convert": "recipec convert: one keyword per flag (--to, ..., --quantize)"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _unit(module: str) -> str:
    """The layer entry a module belongs to: its package; the base and the entry points are one unit each."""
    if module in LAYERS[0] or module in LAYERS[-1]:
        return "base" if module in LAYERS[0] else "entry"
    best = ""
    for layer in LAYERS:
        for entry in layer:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > len(best):
                best = entry
    assert best, f"{module} is in no layer: add it to LAYERS"
    return best


def _layer(module: str) -> int:
    unit = _unit(module)
    special = {"base": 0, "entry": len(LAYERS) - 1}
    return special[unit] if unit in special else next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                yield from _imports(child, in_function)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        yield from _imports(node, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(imported recipec module, imported name or None) for one import statement."""
    is_package = MODULES[module].name == "__init__.py"
    if isinstance(node, ast.Import):
        names = [(alias.name, None) for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        names = [(f"{base}.{alias.name}", alias.name) if f"{base}.{alias.name}" in MODULES else (base, alias.name)
                 for alias in node.names]
    out = []
    for target, name in names:
        if target.split(".")[0] != "recipec":
            continue
        while target not in MODULES and "." in target:
            target = target.rsplit(".", 1)[0]
        out.append((target, None if target.endswith("." + (name or "")) else name))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy, private = [], []
    for module, path in MODULES.items():
        for node, in_function in _imports(ast.parse(path.read_text(), str(path))):
            for target, name in _targets(module, node):
                if target != module:
                    edges[module].add(target)
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                if in_function and (module, target) not in LAZY_EDGES and not any(module == a or module.startswith(a + ".") for a in LAZY_ALLOWED if a != "recipec") \
                        and module != "recipec":
                    lazy.append(f"{where}: {module} imports {target} inside a function")
                if name and name.startswith("_") and not name.startswith("__") and target != module:
                    private.append(f"{where}: {module} imports {name} from {target}")
    return edges, lazy, private


EDGES, LAZY, PRIVATE = _graph()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    assert _cycles(EDGES) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_upward_or_sideways_import() -> None:
    wrong = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
             for m, targets in EDGES.items() for t in targets
             if _unit(t) != _unit(m) and _layer(t) >= _layer(m)]
    assert wrong == []


def test_imports_inside_functions_only_where_a_torch_free_start_needs_them() -> None:
    assert LAZY == []


def test_no_module_imports_another_modules_private_name() -> None:
    assert PRIVATE == []


def test_the_package_root_holds_few_public_modules() -> None:
    root = [m for m, p in MODULES.items() if m.count(".") == 1 and p.name != "__init__.py"
            and not m.rsplit(".", 1)[1].startswith("_")]  # files; the packages are the layers
    assert len(root) <= MAX_ROOT_MODULES, root


def test_the_recipe_object_stops_at_the_compiler() -> None:
    """Below the compiler, nothing names the Recipe type or takes a ``recipe`` parameter."""
    wrong = []
    for module, path in MODULES.items():
        if _layer(module) >= _layer("recipec.compiler") or _unit(module) == "recipec.recipe":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                wrong += [f"{module}.{node.name}({a.arg})" for a in params if a.arg == "recipe"]
            if isinstance(node, ast.Name) and node.id == "Recipe":
                wrong.append(f"{module}:{node.lineno} names Recipe")
    assert wrong == []


@pytest.mark.parametrize("module", [m for m in MODULES if m.split(".")[1:2] != ["commands"]])
def test_no_function_takes_more_than_eight_parameters(module: str) -> None:
    wrong = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                      if a.arg not in ("self", "cls")]
            if len(params) > MAX_PARAMETERS and f"{module}.{node.name}" not in MANY_FLAGS:
                wrong.append(f"{node.name}: {len(params)} parameters")
    assert wrong == []
