"""What the tracking backends share: a metrics line as scalars, a recipe as flat params, a failure in one line."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from recipec.recipe.spec import Recipe

__all__ = ["failure_reason", "first_line", "flatten", "mlflow_scalars", "scalars"]


def scalars(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """The numbers of one metrics.jsonl line as (tag, value): every finite number under its own name, nested
    objects as ``outer/inner`` (``lr/head``); ``epoch`` is the step, booleans and text are not numbers."""
    for key, value in metrics.items():
        if key == "epoch":
            continue
        if isinstance(value, Mapping):
            for inner, number in value.items():
                if _number(number):
                    yield f"{key}/{inner}", float(number)
        elif _number(value):
            yield str(key), float(value)


def flatten(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as ``{"optimizer.lr": 0.001, ...}``: lists as JSON text, null as ``"null"``."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (bool, int, float, str)):
            out[prefix] = node
        else:
            out[prefix] = json.dumps(node) if node is not None else "null"

    walk(recipe.model_dump(mode="json"), "")
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mlflow_scalars(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """:func:`scalars` under names MLflow accepts: letters, digits, ``_ - . /`` and spaces, no empty, ``.`` or
    ``..`` part (a class name such as ``a:b`` in ``val_per_class_acc/a:b`` becomes ``val_per_class_acc/a_b``)."""
    for tag, value in scalars(metrics):
        parts = [re.sub(r"[^\w.\- ]", "_", part) for part in tag.split("/")]
        yield "/".join(part if part.strip(".") else "_" * max(len(part), 1) for part in parts)[:250], value


def first_line(exc: BaseException | str) -> str:
    """The first line of an error's text (at most 300 characters), or its type's name when it has none."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# what MLflow's client wraps in "API request to URL failed with exception HTTPConnectionPool(...): Max retries ..."
_CAUSES = ((r"too many (\d+) error responses", r"HTTP \1, also on retrying"), (r"Connection refused", "connection refused"),
           (r"Read timed out|timed out", "no answer in time"), (r"Name or service not known|nodename nor servname",
                                                                   "unknown host"),
           (r"Remote ?Disconnected|Connection aborted|Connection reset", "the server closed the connection"))


def failure_reason(exc: BaseException) -> str:
    """A short reason for a failed MLflow call: the cause of an HTTP failure when it is a known one, else the first
    line of the error."""
    text = str(exc)
    if "HTTPConnectionPool" in text or "HTTPSConnectionPool" in text:
        for pattern, reason in _CAUSES:
            found = re.search(pattern, text)
            if found:
                return found.expand(reason)
    return first_line(exc)
