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
import re
import string
import types
from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.core.exceptions import AppRegistryNotReady, ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError
from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from . import template_limits as limits

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
_MAX_OUTPUT = limits.MAX_STRING


class TemplateProblem(ValueError):
    """A template could not be compiled or evaluated; ``message`` is user-facing."""


class _Environment(ImmutableSandboxedEnvironment):
    # Every operator that can build a large value from a few characters of template is
    # sized before it runs (``steps.template_limits``); the sandbox intercepts only these.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

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
        limits.check_deadline()
        if op == "*":
            return limits.multiply(left, right)
        if op == "**":
            return limits.power(left, right)
        if op == "+":
            return limits.add(left, right)
        if op == "%" and isinstance(left, (str, bytes)):
            if isinstance(left, bytes):
                raise SecurityError("%-formatting bytes is not supported in templates")
            return limits.percent_format(left, right)
        return super().call_binop(context, op, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # Every call (methods, macros, loop(...) of a recursive loop, range) is a step of the
        # render's budget; str/bytes methods are sized before they run.
        limits.step("call")
        what = limits.check_method_call(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return limits.checked_result(result, what or "a call")

    def wrap_str_format(self, value: Any) -> Any:
        """``'...'.format(...)`` and ``format_map`` through a formatter that sizes every field."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) \
                or value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
            return None
        template: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            formatter = limits.BoundedFormatter(self)
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return str(formatter.vformat(template, (), args[0]))
            return str(formatter.vformat(template, args, kwargs))

        return functools.update_wrapper(wrapper, value)


def _finalize(value: Any) -> str:
    """Every ``{{ }}`` output of a text template is counted (and the deadline checked)."""
    text = limits.as_text(value, "output")
    limits.charge(len(text))
    return text


_env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize)
_env.filters["tojson"] = __import__("json").dumps  # plain JSON, no HTML escaping (bounded below)
_env.filters = limits.bounded_filters(_env.filters)
_env.globals["range"] = limits.guarded_range
# The classic SSTI gadgets; templates see input, steps, run (and item/index), nothing else.
for _gadget in ("lipsum", "cycler", "joiner"):
    _env.globals.pop(_gadget, None)


class _Bounder(NodeTransformer):
    """Rewrites a parsed template so loops and ``~`` go through ``steps.template_limits``."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        # Each iteration appends the loop body's literal text: charge it to the render.
        literal = sum(len(data.data) for child in node.body for data in child.find_all(nodes.TemplateData))
        node.iter = nodes.Filter(node.iter, "stevora_loop", [nodes.Const(literal)], [], None, None,
                                 lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Filter(nodes.List(list(node.nodes), lineno=node.lineno), "stevora_concat", [], [], None, None,
                            lineno=node.lineno)


def _bounded(tree: nodes.Template) -> nodes.Template:
    bounded = _Bounder().visit(tree)
    bounded.set_environment(_env)
    return bounded


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
    # What Environment.compile_expression does, with the bounding rewrite in between.
    try:
        parser = Parser(_env, expr, state="variable")
        node = parser.parse_expression()
        if not parser.stream.eos:
            raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno, None, None)
        _check_ast(nodes.Template([nodes.Output([node])]))
        tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), node)], lineno=1)
        return TemplateExpression(_env.from_string(_bounded(tree)), undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"invalid expression {expr.strip()!r}: {exc.message}") from None


@functools.lru_cache(maxsize=4096)
def _compile_template(source: str) -> Any:
    try:
        tree = _env.parse(source)
        _check_ast(tree)
        return _env.from_string(_bounded(tree))
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
        if plain:
            limits.check_value_size(result, "the value")
            return _plain(result, what)
        return _no_undefined(result)
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
    """Render every template string inside ``value`` (dicts and lists recursively).

    One call is one render for the limits in ``steps.template_limits`` (loop steps, output
    budget, deadline), however many template strings ``value`` holds.
    """
    with limits.render_budget():
        return _render(value, context)


def _render(value: Any, context: Mapping[str, Any]) -> Any:
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
        return {k: _render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    return value


def evaluate(expr: str | bool, context: Mapping[str, Any]) -> Any:
    """Evaluate a bare expression (``steps.fetch.output.status == 200``)."""
    if isinstance(expr, bool):
        return expr
    source = _strip_braces(expr)
    with limits.render_budget():
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
