"""A Jinja2 sandbox that also bounds what a template may cost: output size, string sizes, loops and time.

Jinja2's ``SandboxedEnvironment`` keeps a template from reaching Python internals, but not from
asking for ``'x' * 10**10``, ``10 ** 10 ** 10``, nested ``range(100000)`` loops, a list that
doubles itself (``l.extend(l)`` forty times) or a macro that calls itself. A card is a page of
Markdown, so every limit here is far above what a real card needs and far below what hurts the
machine:

- no value is changed in place: the sandbox is Jinja2's immutable one, so the mutating methods
  of lists, dicts and sets (``append``, ``extend``, ``insert``, ``update``, ``setdefault``,
  ``add``, ...) are refused; a template builds new values (``l + [x]``) and those are bounded;
- every string, list or number a template builds (``*``, ``**``, ``+``, ``~``, ``%``, a filter
  or a method whose arguments ask for more, a ``join`` of many long strings) stays under :data:`MAX_CHARS` characters / items;
- the ranges a render iterates hold at most :data:`MAX_STEPS` items together;
- the output stops at :data:`MAX_CHARS` characters, and rendering at :data:`MAX_SECONDS`
  (a timer interrupts it on the main thread; elsewhere each output chunk and operation checks the clock);
- ``lipsum`` (n paragraphs of text) is not available.

Each limit raises :class:`TemplateLimit`; recursion (a macro without end, nesting thousands deep)
is turned into one by :func:`render_limited`.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import jinja2
import jinja2.compiler
import jinja2.sandbox

__all__ = ["MAX_CHARS", "MAX_SECONDS", "MAX_STEPS", "LimitedSandbox", "TemplateLimit", "render_limited"]

MAX_CHARS = 10_000_000  # a card is a page of Markdown; 10 MB is a hundred books
MAX_STEPS = 10_000_000  # range items iterated in one render
MAX_SECONDS = 20.0  # the shipped card renders in milliseconds
_BIG_WIDTH = re.compile(r"[0-9]{8,}")  # a width or precision of 10**7 and more in a %-format or str.format


class TemplateLimit(Exception):
    """A template asked for more than a card may cost; the message says what and how much."""


class _Timeout(BaseException):
    """Raised by the timer; a BaseException so no ``except Exception`` inside Jinja2 swallows it."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


def _check(size: float, what: str) -> None:
    if size > MAX_CHARS:
        raise TemplateLimit(f"{what} would hold {size:,.0f} characters or items; a card template may build at most "
                            f"{MAX_CHARS:,}")


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """``a ~ b`` goes through :meth:`LimitedSandbox.limited_concat`, so doubling a string in a loop is bounded too."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
        self.write("environment.limited_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """An ``ImmutableSandboxedEnvironment`` with the limits of this module (autoescape must stay off)."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%", "//"])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._range
        self.filters = {name: _guard_filter(name, f, self) for name, f in self.filters.items()}
        self.steps = 0
        self.deadline = math.inf

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return super().is_safe_attribute(obj, attr, value) and not _mutates(obj, attr)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        if _mutates(obj, attribute):
            return self.undefined(f"{type(obj).__name__}.{attribute}() changes a value in place, which a card "
                                  "template may not do; build a new value instead (e.g. l + [x])",
                                  name=attribute, obj=obj, exc=jinja2.sandbox.SecurityError)
        return super().unsafe_undefined(obj, attribute)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"rendering took longer than {MAX_SECONDS:g} s")

    def _range(self, *args: int) -> Iterator[int]:
        items = jinja2.sandbox.safe_range(*args)  # one range: at most 100,000 items
        self.steps += len(items)
        if self.steps > MAX_STEPS:
            raise TemplateLimit(f"loops over range() would take more than {MAX_STEPS:,} steps")
        self.check_time()
        return iter(items)

    def limited_concat(self, parts: tuple[Any, ...]) -> str:
        texts = [str(p) for p in parts]
        _check(sum(map(len, texts)), "a '~' concatenation")
        return "".join(texts)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        self.check_time()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) and isinstance(n, int):
                    _check(_size(seq) * n, f"{type(seq).__name__} * {n}")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > 4096:
                raise TemplateLimit("a product of over 4096 bits is too large a number for a card")
        elif operator == "+":
            _check(_size(left) + _size(right), "a '+' of two sequences")
        elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > 4096:
                raise TemplateLimit(f"{left} ** {right} is too large a number for a card (over 4096 bits)")
        elif operator == "%" and isinstance(left, str) and _BIG_WIDTH.search(left):
            raise TemplateLimit("a %-format with a width or precision of 10,000,000 or more")
        result = super().call_binop(context, operator, left, right)
        _check(_size(result), f"the result of {operator!r}")
        return result

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.check_time()
        _check_arguments(getattr(__obj, "__name__", "a call"), __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _check(_size(result), f"the result of {getattr(__obj, '__name__', 'a call')}()")
        return result


def _mutates(obj: Any, attribute: str) -> bool:
    """Whether ``obj.attribute`` changes ``obj`` in place: Jinja2's table, which misses ``set.intersection_update``."""
    return jinja2.sandbox.modifies_known_mutable(obj, attribute) or (
        isinstance(obj, collections.abc.MutableSet) and attribute == "intersection_update")


def _check_arguments(name: str, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse arguments that ask for a huge result before it is built (widths, counts, replacements)."""
    values = [*args, *kwargs.values()]
    for value in values:
        if isinstance(value, (list, tuple)) and name == "join":  # [s] * n holds n references, joined n copies
            _check(sum(_size(item) for item in value), f"{name}() of {len(value):,} items")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise TemplateLimit(f"{name}(): argument {value:,} is larger than a card may use ({MAX_CHARS:,})")
        if isinstance(value, str) and _BIG_WIDTH.search(value) and name in ("format", "format_map"):
            raise TemplateLimit(f"{name}(): a width or precision of 10,000,000 or more")
    if name == "replace":
        subject = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
        text = subject if isinstance(subject, str) else (args[0] if args and isinstance(args[0], str) else "")
        new = [v for v in values if isinstance(v, str)]
        if text and new:
            _check(len(text) * max(1, max(map(len, new))) + len(text), "replace()")
    subject = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)  # the sandbox wraps str.format
    if name in ("format", "format_map") and isinstance(subject, str) and _BIG_WIDTH.search(subject):
        raise TemplateLimit(f"{name}(): a width or precision of 10,000,000 or more")


def _guard_filter(name: str, func: Any, env: LimitedSandbox) -> Any:
    @functools.wraps(func)  # keeps jinja_pass_arg (pass_context, pass_environment, ...)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        env.check_time()
        plain = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment,
                                                          jinja2.nodes.EvalContext))]
        _check_arguments(name, func, tuple(plain), kwargs)
        result = func(*args, **kwargs)
        _check(_size(result), f"the {name} filter")
        return result

    return guarded


@contextlib.contextmanager
def _timer(seconds: float) -> Iterator[None]:
    """Interrupt the render after ``seconds`` where signals allow it (the main thread of a POSIX process)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def render_limited(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render ``template`` within this module's limits.

    Raises:
        TemplateLimit: the output, a value, the loops or the time went over a limit, or the
            template recursed too deeply.
    """
    env = template.environment
    assert isinstance(env, LimitedSandbox)
    env.steps, env.deadline = 0, time.monotonic() + MAX_SECONDS
    out: list[str] = []
    size = 0
    try:
        with _timer(MAX_SECONDS):
            for chunk in template.generate(context):
                size += len(chunk)
                _check(size, "the card")
                env.check_time()
                out.append(chunk)
    except _Timeout:
        raise TemplateLimit(f"rendering took longer than {MAX_SECONDS:g} s") from None
    except RecursionError:
        raise TemplateLimit("recursion too deep (a macro that calls itself without end, or blocks nested "
                            "thousands deep)") from None
    except MemoryError:
        raise TemplateLimit("rendering ran out of memory") from None
    finally:
        env.deadline = math.inf
    return "".join(out)
