"""User-controlled sizes cost linear time, or are bounded: --set keys and values, lists, problems, manifests.

A 6 KB dotted ``--set`` key of 3000 levels used to run past 10 s (about cubic: 5000 levels ~86 s).
Each test times an input and one four times its size (the best of three runs each, so a busy
machine's stalls do not count) and fails when the cost grows like a square or worse (16x for
4x the input; the bound is 10x).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from recipec.errors import RecipeError
from recipec.recipe.load import MAX_SET_DEPTH, MAX_SET_KEY, MAX_SET_VALUE, load_recipe

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
GROWTH = 4
MOST = 10.0  # a linear cost reads ~4x, a quadratic one 16x


def _best(call: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        with contextlib.suppress(RecipeError):  # a refusal costs time too
            call()
        times.append(time.perf_counter() - start)
    return min(times)


def _grows_linearly(make: Callable[[int], Callable[[], object]], n: int) -> None:
    small, large = _best(make(n)), _best(make(n * GROWTH))
    ratio = large / max(small, 1e-4)
    assert ratio < MOST, f"{GROWTH}x the input took {ratio:.1f}x the time ({small:.3f} s -> {large:.3f} s)"


def test_a_deep_set_key_is_refused_at_once() -> None:
    with pytest.raises(RecipeError, match=rf"{MAX_SET_DEPTH + 1} levels deep; a recipe key has at most {MAX_SET_DEPTH}"):
        load_recipe(QUICKSTART, [".".join(["a"] * (MAX_SET_DEPTH + 1)) + "=1"])
    for levels in (3000, 5000):  # 6 and 10 KB: the 10 s and 86 s
        start = time.perf_counter()
        with pytest.raises(RecipeError, match=r"a --set key may have at most 1,000"):
            load_recipe(QUICKSTART, [".".join(["a"] * levels) + "=1"])
        assert time.perf_counter() - start < 1.0
    problem = _problem([".".join(["model", "kwargs"] + ["a"] * (MAX_SET_DEPTH - 2)) + "=1"])
    assert "levels deep" not in problem  # the deepest allowed key is applied (and the arch refuses the kwargs later)


def _problem(overrides: list[str]) -> str:
    try:
        load_recipe(QUICKSTART, overrides)
    except RecipeError as exc:
        return "\n".join(exc.problems)
    return ""


def test_long_set_keys_and_values_are_refused_without_quoting_them_whole() -> None:
    key = "a" * (MAX_SET_KEY + 1)
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, [f"{key}=1"])
    assert f"the key has {MAX_SET_KEY + 1:,} characters" in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, ["data.classes=" + "x" * (MAX_SET_VALUE + 1)])
    assert f"the value has {MAX_SET_VALUE + 1:,} characters" in str(info.value) and len(str(info.value)) < 300


def test_set_key_depth_costs_linear_time_up_to_its_bound() -> None:
    _grows_linearly(lambda n: lambda: load_recipe(QUICKSTART, [".".join(["model", "kwargs"] + ["a"] * n) + "=1"]),
                    MAX_SET_DEPTH // GROWTH - 2)


def test_many_overrides_cost_linear_time() -> None:
    _grows_linearly(lambda n: lambda: load_recipe(QUICKSTART, [f"model.kwargs.k{i}={i}" for i in range(n)]), 100)


def test_many_overrides_with_a_problem_cost_linear_time() -> None:
    """Finding which override caused a problem reloads the recipe once per override: bounded, not quadratic."""
    _grows_linearly(lambda n: lambda: load_recipe(QUICKSTART, [f"model.kwargs.k{i}={i}" for i in range(n)]
                                                  + ["train.epochs=0"]), 100)


def test_a_long_value_costs_linear_time() -> None:
    _grows_linearly(lambda n: lambda: load_recipe(QUICKSTART, ["data.classes=[" + ", ".join(
        f"c{i}" for i in range(n)) + "]"]), 2000)


def test_many_unknown_keys_cost_linear_time(tmp_path: Path) -> None:
    """Each unknown key gets its own located problem and "did you mean": linear in their number."""
    def make(n: int) -> Callable[[], object]:
        path = tmp_path / f"r{n}.yaml"
        path.write_text(QUICKSTART.read_text() + "".join(f"extra_{i}: {i}\n" for i in range(n)))
        return lambda: load_recipe(path)
    _grows_linearly(make, 200)


def test_a_long_list_in_a_recipe_costs_linear_time(tmp_path: Path) -> None:
    def make(n: int) -> Callable[[], object]:
        path = tmp_path / f"l{n}.yaml"
        path.write_text(QUICKSTART.read_text() + "card:\n  tags: [" + ", ".join(f"t{i}" for i in range(n)) + "]\n")
        return lambda: load_recipe(path)
    _grows_linearly(make, 2000)
