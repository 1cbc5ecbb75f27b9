"""Text safe to print: control characters from files (tensor names, metadata) shown, not obeyed.

A tensor named ``"w\\x1b[2J"`` would clear the screen, ``"\\x1b]0;...\\x07"`` retitle the window,
a bare ``"\\r"`` overwrite the line, and a bidi override (U+202E) reorder what is read. Every line
recipec prints that can hold text from a file goes through :func:`escape`.
"""

from __future__ import annotations

import re

__all__ = ["escape"]

# C0 and C1 controls but newline and tab, DEL, and the Unicode bidi embeddings, overrides and isolates.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape(text: str, *, newlines: bool = True) -> str:
    """``text`` with each control character written as its Python escape (``\\x1b``, ``\\u202e``).

    Args:
        text: any text.
        newlines: keep ``\\n`` and ``\\t`` as they are (multi-line output); False escapes them too
            (one-line values such as an error problem or a metadata entry).

    Example:
        >>> escape("w\\x1b[31m")
        'w\\\\x1b[31m'
    """
    text = _CONTROL.sub(_code, text)
    return text if newlines else text.replace("\n", "\\n").replace("\t", "\\t")


def _code(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]
