"""Time and size limits for rendering: the sandbox refuses what would take the machine down.

Jinja's ``SandboxedEnvironment`` stops a template reaching ``__class__`` or ``__globals__``,
but ``{{ 10**(10**6) }}`` (a million-digit integer, seconds of CPU; Jinja's ``**`` is
left-associative, so ``10**10**6`` is only ``(10**10)**6``) and ``{{ 'x' * 10**8 }}``
(100 MB per contact) render. ``LimitedSandbox`` intercepts ``**`` and ``*`` and refuses a
result larger than the limits before computing it, counts the output while it is written
(``bounded_concat``), and checks a per-render deadline on every call and every 256 steps of
``range``. A template over a limit fails with ``RenderLimitError``, which the renderer turns
into a ``TemplateRenderError`` naming the file and line.

>>> env = LimitedSandbox()
>>> env.from_string("{{ 2 ** 10 }} {{ 'ab' * 3 }}").render()
'1024 ababab'
>>> env.from_string("{{ 10 ** (10 ** 6) }}").render()
Traceback (most recent call last):
    ...
tidings.templates.limits.RenderLimitError: 10 ** 1000000 is larger than 100000 bits
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections.abc import Generator, Iterator
from itertools import islice
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment, safe_range

MAX_INT_BITS = 100_000
"""Largest integer a template may compute (about 30,000 digits)."""
DEFAULT_MAX_OUTPUT = 2_000_000
DEFAULT_TIMEOUT = 2.0
RANGE_CHECK_EVERY = 256
CONCAT_BATCH = 64


class RenderLimitError(SecurityError):
    """A template went over a render limit (size of a result, of the output, or time)."""


class _Clock(threading.local):
    deadline: float = math.inf
    seconds: float = math.inf


_state = _Clock()
_monotonic = time.monotonic


def set_deadline(seconds: float | None) -> None:
    """Start this thread's render clock (``None``: no deadline)."""
    _state.deadline = math.inf if seconds is None else _monotonic() + seconds
    _state.seconds = math.inf if seconds is None else seconds


def check_deadline() -> None:
    if _monotonic() > _state.deadline:
        raise RenderLimitError(
            f"rendering took longer than {_state.seconds:g} s (TIDINGS_TEMPLATE_TIMEOUT)"
        )


def _size(value: Any) -> int | None:
    """Length of a repeatable sequence (str, list, tuple); None for anything else."""
    return len(value) if isinstance(value, str | list | tuple) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _TimedRange:
    """``range`` that checks the render deadline as it is iterated."""

    __slots__ = ("_range",)

    def __init__(self, values: range) -> None:
        self._range = values

    def __iter__(self) -> Iterator[int]:
        for i, value in enumerate(self._range):
            if not i % RANGE_CHECK_EVERY:
                check_deadline()
            yield value

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __contains__(self, value: object) -> bool:
        return value in self._range

    def __reversed__(self) -> Iterator[int]:
        return iter(_TimedRange(self._range[::-1]))

    def __repr__(self) -> str:
        return repr(self._range)


def timed_range(*args: int) -> _TimedRange:
    """The sandbox's ``range`` (at most 100,000 items), checking the render deadline."""
    return _TimedRange(safe_range(*args))


_DICT_ATTRIBUTES = frozenset(dir(dict))


class LimitedSandbox(SandboxedEnvironment):
    """A ``SandboxedEnvironment`` with limits on ``**``, ``*``, output size and time."""

    intercepted_binops = frozenset({"*", "**"})
    max_output: int = DEFAULT_MAX_OUTPUT
    """Characters one render may write (``TIDINGS_TEMPLATE_MAX_OUTPUT``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals["range"] = timed_range

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            base, exponent = _int(left), _int(right)
            if (
                base is not None
                and exponent is not None
                and exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS
            ):
                raise RenderLimitError(f"{base} ** {exponent} is larger than {MAX_INT_BITS} bits")
            return operator.pow(left, right)
        if operator_ == "*":
            self._check_product(left, right)
            return operator.mul(left, right)
        return super().call_binop(context, operator_, left, right)

    def _check_product(self, left: Any, right: Any) -> None:
        for seq, times in ((left, right), (right, left)):
            size, count = _size(seq), _int(times)
            if size is not None and count is not None and size * count > self.max_output:
                raise RenderLimitError(
                    f"a sequence of {size} repeated {count} times is longer than "
                    f"{self.max_output} (TIDINGS_TEMPLATE_MAX_OUTPUT)"
                )
        a, b = _int(left), _int(right)
        if a is not None and b is not None and a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise RenderLimitError(f"a product larger than {MAX_INT_BITS} bits")

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute``. For a plain dict and a name that is no dict attribute, Jinja
        would try ``getattr`` (an ``AttributeError`` raised and caught, the costliest step of
        ``{{ order.total }}``) and then ``obj[attribute]``: go to the item at once."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return SandboxedEnvironment.getattr(self, obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if _monotonic() > _state.deadline:  # check_deadline, inlined: a call is frequent
            check_deadline()
        return SandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)


def bounded_concat(chunks: Iterator[str], limit: int, batch: int = CONCAT_BATCH) -> str:
    """The chunks joined; ``RenderLimitError`` once they pass ``limit`` characters.

    Joined a batch of chunks at a time (in C: ``islice``, ``str.join``), so a normal render
    pays next to nothing; the error is thrown into the template's generator, so its
    traceback holds the template line that was writing."""
    more = list(islice(chunks, batch))
    out = "".join(more)
    if len(more) == batch:  # a long render: count as it goes
        parts = [out]
        size = len(out)
        while size <= limit and more:
            more = list(islice(chunks, batch))
            parts.append("".join(more))
            size += len(parts[-1])
        out = "".join(parts)
    if len(out) > limit:
        error = RenderLimitError(
            f"output longer than {limit} characters (TIDINGS_TEMPLATE_MAX_OUTPUT)"
        )
        if isinstance(chunks, Generator):
            chunks.throw(error)
        raise error
    return out
