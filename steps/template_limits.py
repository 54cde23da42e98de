"""Resource limits for templates: every string-building operation is sized before it runs.

Conditions and output templates are evaluated while the engine holds a run's row
lock, and a definition is written by whoever may load one, so a template must not be
able to build a gigabyte string or spin for minutes. The sandbox (``steps.templating``)
routes every operator, method call, filter, ``~`` concatenation, ``for`` loop and
output through the checks below. The limits (documented in docs/definitions.md):

- ``MAX_STRING``: no string (or list) a template builds may exceed 1,000,000
  characters (items). Operations whose size follows from their arguments (``ljust``,
  ``center``, ``%``-formatting, ``format``, ``join``, ``replace``, ``*``, ...) are
  refused *before* they allocate; operations whose result is a fixed small multiple
  of an input that is itself within the limit (``upper``, ``urlencode``) are checked
  on their result.
- ``MAX_INT_BITS``: integers from ``*`` and ``**`` stay under 100,000 bits.
- ``MAX_RANGE``: ``range()`` yields at most 100,000 numbers.
- ``MAX_STEPS``: at most 10,000 loop iterations and calls in one render, all loops
  together (nested loops multiply, so this is what stops them).
- ``MAX_PRODUCED``: at most 10,000,000 characters built in one render, counted over
  every checked operation and every ``{{ }}`` output.
- ``DEADLINE_SECONDS``: one render stops after 1 second of wall-clock time, checked
  at every loop iteration, call, filter, operator and output.

A "render" is one call of ``render_value`` (a step's whole config, a run's output) or
``evaluate`` (one condition). Exceeding a limit raises ``LimitExceeded`` naming it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import pass_environment, pass_eval_context
from jinja2.exceptions import FilterArgumentError, SecurityError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import SandboxedFormatter

MAX_STRING = 1_000_000
MAX_INT_BITS = 100_000
MAX_EXPONENT = 1000
MAX_RANGE = 100_000
MAX_STEPS = 10_000
MAX_PRODUCED = 10_000_000
DEADLINE_SECONDS = 1.0


class LimitExceeded(SecurityError):
    """A template reached one of the resource limits; the message names it."""


@dataclass
class Budget:
    """What one render has used so far."""

    deadline: float
    steps: int = 0
    produced: int = 0

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"the render took longer than the render deadline ({DEADLINE_SECONDS:g} s)")

    def step(self, what: str) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise LimitExceeded(f"more than {MAX_STEPS} loop iterations and calls in one render "
                                f"(the loop limit), at a {what}")
        self.check_deadline()

    def produce(self, size: int) -> None:
        self.produced += size
        if self.produced > MAX_PRODUCED:
            raise LimitExceeded(f"the render built more than {MAX_PRODUCED} characters (the render output budget)")
        self.check_deadline()


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("stevora_template_budget", default=None)


@contextlib.contextmanager
def render_budget() -> Iterator[Budget]:
    """One render's budget; nested calls share the outermost one."""
    budget = _current.get()
    if budget is not None:
        yield budget
        return
    budget = Budget(deadline=time.monotonic() + DEADLINE_SECONDS)
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def step(what: str) -> None:
    budget = _current.get()
    if budget is not None:
        budget.step(what)


def check_deadline() -> None:
    budget = _current.get()
    if budget is not None:
        budget.check_deadline()


def charge(size: int) -> None:
    budget = _current.get()
    if budget is not None:
        budget.produce(size)


def refuse_over(size: int, what: str, unit: str = "characters") -> None:
    if size > MAX_STRING:
        raise LimitExceeded(f"{what} would build {size} {unit}, more than the string limit ({MAX_STRING})")


def check_size(size: int, what: str, unit: str = "characters") -> None:
    """Refuse an operation that would build more than MAX_STRING characters (or items); count it."""
    refuse_over(size, what, unit)
    charge(size)


def checked_result(result: Any, what: str) -> Any:
    """Count a result that is at most a small multiple of inputs already within the limit."""
    if isinstance(result, (str, bytes, bytearray, list, tuple)):
        check_size(len(result), what, "characters" if isinstance(result, (str, bytes, bytearray)) else "items")
    return result


def as_count(value: Any, what: str) -> int:
    """A width, count or size argument as an int (floats like 3e8 are what a payload uses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise LimitExceeded(f"{what} is {value}, more than the string limit ({MAX_STRING})")
    return int(value)


def deep_size(value: Any, limit: int = MAX_STRING) -> int:
    """About how many characters ``str(value)`` or JSON of it would take; stops counting past ``limit``.

    A list may hold the same long string a thousand times (``[s] * 1000``, ``[s, s, s]``):
    small to build, a gigabyte to print. This is checked before anything is printed.
    """
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item) + 2
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
        elif isinstance(getattr(item, "_Namespace__attrs", None), dict):  # jinja2's namespace()
            total += 16
            stack.append(item._Namespace__attrs)
        else:
            total += 24
        if total > limit:
            return total
    return total


def text_len(value: Any) -> int:
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    refuse_over(deep_size(value), "printing a value")
    return len(str(value))


def as_text(value: Any, what: str) -> str:
    """``str(value)``, refused first if it would exceed the string limit."""
    if isinstance(value, str):
        return value
    refuse_over(deep_size(value), what)
    return str(value)


# --- operators --------------------------------------------------------------------------


def multiply(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int) and not isinstance(times, bool):
            check_size(len(seq) * max(times, 0), "'*'", "characters" if isinstance(seq, (str, bytes)) else "items")
            if isinstance(seq, (list, tuple)) and times > 1:
                refuse_over(deep_size(seq, MAX_STRING) * times, "'*' (counting the characters its items hold)")
            return left * right
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise LimitExceeded(f"'*' would build an integer of more than {MAX_INT_BITS} bits (the integer limit)")
    return left * right


def power(left: Any, right: Any) -> Any:
    if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
        raise LimitExceeded(f"exponent {right} is larger than {MAX_EXPONENT} (the exponent limit)")
    if isinstance(left, int) and isinstance(right, int) and right > 0 and left.bit_length() * right > MAX_INT_BITS:
        raise LimitExceeded(f"'**' would build an integer of more than {MAX_INT_BITS} bits (the integer limit)")
    return left**right


def add(left: Any, right: Any) -> Any:
    if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, type(left)):
        check_size(len(left) + len(right), "'+'", "characters" if isinstance(left, (str, bytes)) else "items")
        if isinstance(left, (list, tuple)) and deep_size(left, MAX_PRODUCED) + deep_size(right, MAX_PRODUCED) \
                > MAX_PRODUCED:
            raise LimitExceeded(f"'+' would build a list holding more than {MAX_PRODUCED} characters "
                                "(the render output budget)")
    return left + right


def concat(parts: Iterable[Any]) -> str:
    """``a ~ b ~ c``: the sandbox compiles ``~`` to this (see ``steps.templating``)."""
    texts = [as_text(p, "'~'") for p in parts]
    check_size(sum(len(t) for t in texts), "'~'")
    return "".join(texts)


_PERCENT_SPEC = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<conv>.?)", re.DOTALL)


def percent_format(fmt: str, values: Any) -> str:
    """``fmt % values`` (the ``%`` operator and the ``format`` filter), sized before it runs."""
    if isinstance(values, Mapping):
        args: tuple[Any, ...] = ()
    else:
        args = values if isinstance(values, tuple) else (values,)
    bound, index = len(fmt), 0
    for spec in _PERCENT_SPEC.finditer(fmt):
        if spec["conv"] == "%":
            continue
        if "*" in (spec["width"] or "", spec["precision"] or ""):
            raise LimitExceeded("'*' widths in %-formatting are not supported in templates; write the number")
        width, precision = int(spec["width"] or 0), int(spec["precision"] or 0)
        refuse_over(max(width, precision), "%-formatting")
        if spec["key"] is not None and isinstance(values, Mapping):
            value = values.get(spec["key"], "")
        else:
            value = args[index] if index < len(args) else ""
            index += 1
        shown = text_len(value)
        if spec["conv"] in ("r", "a"):
            shown = len(repr(value))  # at most a few times text_len, which is within the limit
        bound += width + precision + shown
    check_size(bound, "%-formatting")
    return fmt % values


class BoundedFormatter(SandboxedFormatter):
    """``str.format`` fields, each sized from its format spec (width, precision) before it is
    formatted, and the whole result kept under the string limit."""

    _NUMBER = re.compile(r"\d+")

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.total = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        text_len(value)  # refuses a value too large to print before format() prints it
        for number in self._NUMBER.findall(format_spec):
            refuse_over(int(number) if len(number) < 30 else MAX_STRING + 1, "format()")
        text = super().format_field(value, format_spec)
        self.total += len(text)
        refuse_over(self.total, "format()")
        charge(len(text))
        return text


# --- str and bytes methods ---------------------------------------------------------------

def _width_method(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> int:
    width = args[0] if args else kwargs.get("width", 0)
    return max(len(s), as_count(width, f"{name}() width"))


def _expandtabs(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> int:
    size = as_count(args[0] if args else kwargs.get("tabsize", 8), "expandtabs() tabsize")
    tab = "\t" if isinstance(s, str) else b"\t"
    return len(s) + s.count(tab) * max(size, 0)


def replaced_size(s: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, (str, bytes)) or not isinstance(new, (str, bytes)):
        return len(s)  # the call itself raises TypeError
    times = s.count(old) if old else len(s) + 1
    count = as_count(count, "replace() count") if count is not None else -1
    if count >= 0:
        times = min(times, count)
    return len(s) + times * max(len(new) - len(old), 0)


def _replace(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> int:
    if len(args) < 2:
        return len(s)
    return replaced_size(s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))


def _join(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> int:
    if not args or not isinstance(args[0], (list, tuple)):
        raise LimitExceeded("join() in templates takes a list; use the 'join' filter for other sequences")
    items = args[0]
    return sum(len(x) if isinstance(x, (str, bytes)) else 0 for x in items) + len(s) * max(len(items) - 1, 0)


def _translate(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> int:
    table = args[0] if args else None
    if isinstance(table, Mapping):
        longest = max((len(v) if isinstance(v, str) else 1 for v in table.values()), default=1)
        return len(s) * max(longest, 1)
    return len(s)


_SIZED_METHODS = {"ljust": _width_method, "rjust": _width_method, "center": _width_method,
                  "zfill": _width_method, "expandtabs": _expandtabs, "replace": _replace, "join": _join,
                  "translate": _translate}


def check_method_call(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Size a str/bytes method call before it runs; returns a name for checking its result."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, (str, bytes, bytearray)):
        return None
    name = getattr(method, "__name__", "")
    sizer = _SIZED_METHODS.get(name)
    if sizer is not None:
        check_size(sizer(owner, args, kwargs, name), f"{type(owner).__name__}.{name}()")
    return f"{type(owner).__name__}.{name}()"


def check_value_size(value: Any, what: str) -> None:
    """A template's typed value (stored, handed to handlers) stays within the render output budget."""
    if deep_size(value, MAX_PRODUCED) > MAX_PRODUCED:
        raise LimitExceeded(f"{what} holds more than {MAX_PRODUCED} characters (the render output budget)")


def guarded_range(*args: Any) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise LimitExceeded(f"range() of {len(numbers)} numbers is more than the range limit ({MAX_RANGE})")
    return numbers


def loop_guard(iterable: Iterable[Any], literal_size: int = 0) -> Iterator[Any]:
    """Every ``for`` loop iterates through this: one step per item, its literal text charged."""
    # The filter is reachable by name from a template too: a negative "size" must not
    # give budget back.
    cost = literal_size if isinstance(literal_size, int) and literal_size > 0 else 0
    for item in iterable:
        step("loop iteration")
        if cost:
            charge(cost)
        yield item


# --- filters ------------------------------------------------------------------------------


def _pre_center(value: Any, width: Any = 80) -> None:
    refuse_over(max(text_len(value), as_count(width, "center width")), "filter 'center'")


def _pre_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    unit = len(width) if isinstance(width, str) else as_count(width, "indent width")
    text = as_text(s, "filter input")
    refuse_over(len(text) + (text.count("\n") + 1) * max(unit, 0), "filter 'indent'")


def _pre_wordwrap(environment: Any, s: Any, width: Any = 79, break_long_words: bool = True,
                  wrapstring: Any = None, break_on_hyphens: bool = True) -> None:
    text = as_text(s, "filter input")
    joint = len(str(wrapstring)) if wrapstring is not None else len(environment.newline_sequence)
    # No more lines than words plus the pieces long words are cut into.
    lines = len(text.split()) + len(text) // max(as_count(width, "wordwrap width"), 1) + text.count("\n") + 1
    refuse_over(len(text) + lines * joint, "filter 'wordwrap'")


def _pre_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> None:
    refuse_over(replaced_size(as_text(s, "filter 'replace'"), as_text(old, "filter 'replace'"),
                              as_text(new, "filter 'replace'"), count), "filter 'replace'")


def _pre_batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    if fill_with is not None:
        refuse_over(as_count(linecount, "batch size"), "filter 'batch'", "items")


def _pre_slice(eval_ctx: Any, value: Any, slices: Any, fill_with: Any = None) -> None:
    refuse_over(as_count(slices, "slice count"), "filter 'slice'", "lists")


def _pre_urlencode(value: Any) -> None:
    if isinstance(value, str):
        refuse_over(len(value.encode()) * 3, "filter 'urlencode'")


def _pre_urlize(eval_ctx: Any, value: Any, trim_url_limit: Any = None, nofollow: bool = False, target: Any = None,
                rel: Any = None, extra_schemes: Any = None) -> None:
    text = as_text(value, "filter 'urlize'")
    extra = 64 + len(str(target or "")) + len(str(rel or ""))
    refuse_over(3 * len(text) + (len(text.split()) + 1) * extra, "filter 'urlize'")


@pass_eval_context
def _join_filter(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    items = list(value)
    if attribute is not None:
        items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
    texts = [as_text(x, "filter 'join'") for x in items]
    check_size(sum(len(t) for t in texts) + len(str(d)) * max(len(texts) - 1, 0), "filter 'join'")
    return str(d).join(texts)


@pass_environment
def _sum(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    items = list(iterable)
    if attribute is not None:
        items = list(map(make_attrgetter(environment, attribute), items))
    if isinstance(start, (list, tuple, str)) or any(isinstance(x, (list, tuple)) for x in items):
        check_size(sum(len(x) for x in [start, *items] if isinstance(x, (list, tuple, str))), "filter 'sum'",
                   "items")
    return sum(items, start)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise FilterArgumentError("can't handle positional and keyword arguments at the same time")
    return percent_format(as_text(value, "filter 'format'"), kwargs or args)


def _tojson(value: Any, indent: Any = None) -> str:
    if indent is not None and not (isinstance(indent, int) and 0 <= indent <= 16):
        raise LimitExceeded("tojson indent must be a number from 0 to 16")
    refuse_over(deep_size(value) * (1 + (indent or 0)), "filter 'tojson'")
    text = json.dumps(value, indent=indent)
    return checked_result(text, "filter 'tojson'")


_PRECHECKS = {"center": _pre_center, "indent": _pre_indent, "wordwrap": _pre_wordwrap, "replace": _pre_replace,
              "batch": _pre_batch, "slice": _pre_slice, "urlencode": _pre_urlencode, "urlize": _pre_urlize}
_REPLACED = {"join": _join_filter, "sum": _sum, "format": _format, "tojson": _tojson}


# Filters that print their input (``str(value)``) before working on it.
_PRINTING = frozenset({"center", "indent", "wordwrap", "string", "pprint", "upper", "lower", "title", "capitalize",
                       "trim", "striptags", "escape", "e", "forceescape", "urlize", "urlencode", "truncate",
                       "wordcount", "replace", "format", "xmlattr", "safe"})


def _bounded(name: str, fn: Any) -> Any:
    pre: Any = _PRECHECKS.get(name)
    value_at = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0  # after a context argument
    printing = name in _PRINTING

    @functools.wraps(fn)  # keeps Jinja's pass_context / pass_eval_context marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check_deadline()
        if printing and len(args) > value_at:
            text_len(args[value_at])
        if pre is not None:
            pre(*args, **kwargs)
        return checked_result(fn(*args, **kwargs), f"filter {name!r}")

    return bounded


def bounded_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    """Every filter with its size check (and the deadline) in front, plus ``stevora_loop``/``stevora_concat``."""
    bounded = {name: _bounded(name, _REPLACED.get(name, fn)) for name, fn in filters.items()}
    bounded["stevora_loop"] = loop_guard
    bounded["stevora_concat"] = concat
    return bounded
