"""Templates and expressions in definitions: Jinja2's sandbox with strict undefined.

A template that is exactly one ``{{ expression }}`` evaluates to the expression's
value with its type kept (a list stays a list); any other template renders to a
string. Conditions (``if:``, ``match:``) are bare expressions. Names starting with an
underscore are refused when a definition is loaded, and the sandbox refuses unsafe
attribute access at render time, so ``{{ ''.__class__ }}``-style payloads never run.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
_MAX_OUTPUT = 1_000_000


class TemplateProblem(ValueError):
    """A template could not be compiled or evaluated; ``message`` is user-facing."""


class _Environment(ImmutableSandboxedEnvironment):
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        return super().is_safe_attribute(obj, attr, value)


_env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.filters["tojson"] = __import__("json").dumps  # plain JSON, no HTML escaping


def _check_ast(tree: nodes.Node) -> None:
    for node in tree.find_all((nodes.Getattr, nodes.Name, nodes.Getitem)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Name):
            name = node.name
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(f"access to {name!r} is not allowed (names starting with '_' are private)")


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


def _evaluate(fn: Any, context: Mapping[str, Any], what: str) -> Any:
    try:
        return fn(**context)
    except UndefinedError as exc:
        raise TemplateProblem(f"{what}: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateProblem(f"{what}: refused by the sandbox: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(f"{what}: {exc}") from None
    except (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError, AttributeError) as exc:
        raise TemplateProblem(f"{what}: {type(exc).__name__}: {exc}") from None


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template string inside ``value`` (dicts and lists recursively)."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        expr = _single_expression(value)
        if expr is not None:
            return _evaluate(_compile_expression(expr), context, f"template {value.strip()!r}")
        template = _compile_template(value)
        try:
            text = template.render(**context)
        except UndefinedError as exc:
            raise TemplateProblem(f"template {value.strip()!r}: {exc.message}") from None
        except SecurityError as exc:
            raise TemplateProblem(f"template {value.strip()!r}: refused by the sandbox: {exc}") from None
        except TemplateError as exc:
            raise TemplateProblem(f"template {value.strip()!r}: {exc}") from None
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
    return _evaluate(_compile_expression(source), context, f"expression {source.strip()!r}")


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
