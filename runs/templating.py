"""Templates and expressions in definitions: Jinja2's sandbox with strict undefined.

A template that is exactly one ``{{ expression }}`` evaluates to the expression's
value with its type kept (a list stays a list); any other template renders to a
string. Conditions (``if:``, ``match:``) are bare expressions. Names starting with an
underscore are refused when a definition is loaded, and the sandbox refuses unsafe
attribute access at render time, so ``{{ ''.__class__ }}``-style payloads never run.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import string
from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.core.exceptions import AppRegistryNotReady, ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError
from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
_MAX_OUTPUT = 1_000_000


class TemplateProblem(ValueError):
    """A template could not be compiled or evaluated; ``message`` is user-facing."""


class _Environment(ImmutableSandboxedEnvironment):
    # Multiplying a string or list, or raising to a power, can build gigabytes from a
    # few characters of template; the sandbox only intercepts the operators listed here.
    intercepted_binops = frozenset({"*", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Templates read JSON: ``output.items`` means the key "items", not dict.items.
        if isinstance(obj, Mapping) and isinstance(attribute, str) and not attribute.startswith("_"):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) \
                        and len(seq) * times > _MAX_OUTPUT:
                    raise SecurityError(f"{op!r} would build more than {_MAX_OUTPUT} items")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {_MAX_EXPONENT}")
            return operator.pow(left, right)
        return super().call_binop(context, op, left, right)


_MAX_EXPONENT = 1000
_env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.filters["tojson"] = __import__("json").dumps  # plain JSON, no HTML escaping
# The classic SSTI gadgets; templates see input, steps, run (and item/index), nothing else.
for _gadget in ("lipsum", "cycler", "joiner"):
    _env.globals.pop(_gadget, None)


# Filters whose string arguments name attributes (dotted paths allowed).
_ATTRIBUTE_FILTERS = frozenset({"attr", "map", "sort", "groupby", "selectattr", "rejectattr", "sum", "unique",
                                "min", "max"})


def _check_ast(tree: nodes.Node) -> None:
    for node in tree.find_all((nodes.Getattr, nodes.Name, nodes.Getitem, nodes.Filter)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
            if name in ("format", "format_map") and isinstance(node.node, nodes.Const):
                _check_format_string(node.node.value)
        elif isinstance(node, nodes.Name):
            name = node.name
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name in _ATTRIBUTE_FILTERS:
            # ``x|attr('__class__')``, ``xs|map(attribute='__class__')``; a computed name is
            # refused by the sandbox at render time.
            consts = [a.value for a in node.args if isinstance(a, nodes.Const)]
            consts += [kw.value.value for kw in node.kwargs if isinstance(kw.value, nodes.Const)]
            name = next((part for c in consts if isinstance(c, str) for part in c.split(".")
                         if part.startswith("_")), None)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(f"access to {name!r} is not allowed (names starting with '_' are private)")


def _check_format_string(value: Any) -> None:
    """``'{0.__class__}'.format(x)`` reaches attributes through a format field."""
    if not isinstance(value, str):
        return
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f]
    except ValueError:
        return  # not a valid format string: the call fails harmlessly at render time
    for field_name in fields:
        for part in re.split(r"[.\[\]]", field_name)[1:]:
            if part.startswith("_"):
                raise TemplateProblem(f"access to {part!r} in the format string {value!r} is not allowed "
                                      "(names starting with '_' are private)")


def _single_expression(source: str) -> str | None:
    match = _SINGLE_EXPRESSION.match(source)
    if match is None:
        return None
    expr = match.group("expr")
    # "{{ a }} and {{ b }}" matches the regex but is not one expression.
    if "{{" in expr or "}}" in expr or "{%" in source:
        return None
    return expr


@functools.lru_cache(maxsize=4096)
def _compile_expression(expr: str) -> Any:
    try:
        tree = _env.parse("{{ " + expr + " }}")
        _check_ast(tree)
        return _env.compile_expression(expr, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"invalid expression {expr.strip()!r}: {exc.message}") from None


@functools.lru_cache(maxsize=4096)
def _compile_template(source: str) -> Any:
    try:
        tree = _env.parse(source)
        _check_ast(tree)
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"invalid template: {exc.message}") from None


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_template(source: str) -> None:
    """Compile ``source`` (raising TemplateProblem) without evaluating it."""
    expr = _single_expression(source)
    if expr is not None:
        _compile_expression(expr)
    else:
        _compile_template(source)


def check_expression(expr: str) -> None:
    _compile_expression(_strip_braces(expr))


def _strip_braces(expr: str) -> str:
    inner = _single_expression(expr)
    return inner if inner is not None else expr


def _evaluate(fn: Any, context: Mapping[str, Any], what: str, *, plain: bool = False, source: str = "") -> Any:
    """Run compiled template code, turning every failure of user code into TemplateProblem."""
    try:
        result = fn(**context)
        # StrictUndefined only raises when used, and a bare expression returns it unused
        # (also the sandbox's verdict on ``x|attr(name)``): fail here, not in json.dumps.
        return _plain(result, what) if plain else _no_undefined(result)
    except TemplateProblem:
        raise
    except UndefinedError as exc:
        raise TemplateProblem(f"{what}: {missing_step_message(source, context) or exc.message}") from None
    except SecurityError as exc:
        raise TemplateProblem(f"{what}: refused by the sandbox: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(f"{what}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError) as exc:
        raise TemplateProblem(f"{what}: {type(exc).__name__}: {exc}") from None


def _no_undefined(value: Any) -> Any:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


def _plain(value: Any, what: str) -> Any:
    """A template's typed value must be JSON data (it is stored and handed to handlers)."""
    _no_undefined(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise TemplateProblem(f"{what}: evaluates to {value}, which is not a JSON number")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, what) for k, v in value.items()}
    raise TemplateProblem(f"{what}: evaluates to a {type(value).__name__}, not JSON data "
                          "(a string, number, boolean, null, list or object)")


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template string inside ``value`` (dicts and lists recursively)."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        expr = _single_expression(value)
        what = f"template {value.strip()!r}"
        if expr is not None:
            result = _evaluate(_compile_expression(expr), context, what, plain=True, source=value)
            if isinstance(result, str) and len(result) > _MAX_OUTPUT:
                raise TemplateProblem(f"template {value.strip()[:60]!r} rendered more than {_MAX_OUTPUT} characters")
            return result
        text = _evaluate(lambda **ctx: _compile_template(value).render(**ctx), context, what, source=value)
        if len(text) > _MAX_OUTPUT:
            raise TemplateProblem(f"template {value.strip()[:60]!r} rendered more than {_MAX_OUTPUT} characters")
        return text
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def evaluate(expr: str | bool, context: Mapping[str, Any]) -> Any:
    """Evaluate a bare expression (``steps.fetch.output.status == 200``)."""
    if isinstance(expr, bool):
        return expr
    source = _strip_braces(expr)
    return _evaluate(_compile_expression(source), context, f"expression {source.strip()!r}", source=source)


def walk_templates(value: Any, path: str) -> list[tuple[str, str]]:
    """All template strings inside ``value`` with their paths."""
    found: list[tuple[str, str]] = []
    if isinstance(value, str):
        if is_template(value):
            found.append((path, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            found.extend(walk_templates(v, f"{path}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(walk_templates(v, f"{path}[{i}]"))
    return found


# --- steps.<name> references ------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def step_references(source: str) -> tuple[str, ...]:
    """The step names a template or expression reads as ``steps.<name>`` or ``steps['<name>']``,
    in order of appearance (``steps.get(...)`` and other method calls are not names). A source
    that does not compile names nothing here: its compile error is reported on its own."""
    expr = _single_expression(source)
    try:
        tree = _env.parse("{{ " + expr + " }}" if expr is not None else source)
    except TemplateSyntaxError:
        return ()
    called = {id(call.node) for call in tree.find_all(nodes.Call)}
    names: list[str] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target: Any = node
        if not (isinstance(target.node, nodes.Name) and target.node.name == "steps") or id(node) in called:
            continue
        if isinstance(target, nodes.Getattr):
            name: Any = target.attr
        else:
            name = target.arg.value if isinstance(target.arg, nodes.Const) else None
        if isinstance(name, str) and name not in names:
            names.append(name)
    return tuple(names)


def missing_step_message(source: str, context: Mapping[str, Any]) -> str | None:
    """An undefined ``steps.<name>`` at run time, said in the workflow's terms (not the
    engine's classes): the step does not exist in the workflow, or has not run yet."""
    steps = context.get("steps")
    if not source or not isinstance(steps, Mapping):
        return None
    missing = [name for name in step_references(source) if name not in steps]
    if not missing:
        return None
    run = context.get("run") if isinstance(context.get("run"), Mapping) else {}
    workflow = f"workflow {run.get('workflow')!r} v{run.get('version')}" if run else "this workflow"
    defined = _defined_step_names(run.get("id")) if run else None
    name = missing[0]
    if defined is not None and name not in defined:
        return f"step {name!r} does not exist in {workflow} (its steps: {', '.join(sorted(defined))})"
    return (f"step {name!r} has no output yet: it has not run in this run before this point "
            f"(a branch not taken, or a step that comes later in {workflow})")


def _defined_step_names(run_id: Any) -> set[str] | None:
    """Every step name of the run's workflow version (None when it cannot be read)."""
    try:
        definition = (apps.get_model("runs", "Run").objects.filter(pk=run_id)
                      .values_list("workflow__definition", flat=True).first())
    except (AppRegistryNotReady, ImproperlyConfigured, DatabaseError, DjangoValidationError):
        return None  # no database here (schema tooling, a template rendered outside a run)
    if not isinstance(definition, dict):
        return None
    names: set[str] = set()
    pending: list[Any] = list(definition.get("steps") or [])
    while pending:
        raw = pending.pop()
        if not isinstance(raw, dict):
            continue
        if isinstance(raw.get("name"), str):
            names.add(raw["name"])
        for steps in (raw.get("branches") or {}).values():
            pending.extend(steps if isinstance(steps, list) else [])
    return names
