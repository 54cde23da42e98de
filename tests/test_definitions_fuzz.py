"""Hypothesis over definitions (text and parsed documents) and run inputs.

Every outcome is success or the documented validation error (``DefinitionError``,
``StartError``), never another exception: not a ``RecursionError`` from a deep
value, not a database error from text PostgreSQL refuses, not a ``TypeError``
from a YAML date or a non-string key. Documents and inputs that pass are stored
in the mode's real database, so a value that validates but cannot be stored fails
here too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runs.definitions import DefinitionError, parse_text, validate
from runs.models import Run, Workflow
from runs.services import StartError, load_workflow, load_workflow_text, start_run

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# Any code point, surrogates and NUL included (Hypothesis' default text leaves surrogates out).
hostile_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=12)
texts = st.one_of(st.text(max_size=12), hostile_text, st.sampled_from(["\x00", "\ud800", "a\udfffb", "{{ x }}",
                                                                       "{% for %}", "{{ input.topic }}"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=25)


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


deep_values = st.integers(min_value=50, max_value=1500).map(deep)
values = st.one_of(json_values, deep_values)

STEP_TYPES = ["task", "llm", "approval", "condition", "external_event", "wait", "parallel", "map", "workflow",
              "nope"]
names = st.one_of(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), texts)


@st.composite
def steps(draw: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": draw(names), "type": draw(st.sampled_from(STEP_TYPES))}
    optional = {"handler": st.sampled_from(["test.value", "test.ledger", "missing.handler"]),
                "config": values, "seconds": st.one_of(st.integers(), st.floats(), texts),
                "retry": st.fixed_dictionaries({}, optional={"max_attempts": st.integers(),
                                                            "backoff_seconds": st.floats()}),
                "timeout_seconds": st.one_of(st.integers(), st.floats()), "next": names,
                "description": texts, "content": values, "event": texts, "key": texts, "model": texts,
                "prompt": texts, "if": texts, "then": names, "else": names, "items": texts,
                "workflow": names, "version": st.integers(), "lookback_seconds": st.floats()}
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        step[key] = draw(optional[key])
    return step


@st.composite
def documents(draw: Any) -> Any:
    document: dict[Any, Any] = {"name": draw(names), "steps": draw(st.lists(steps(), min_size=0, max_size=3))}
    extra = {"description": texts, "input_schema": st.one_of(values, st.just({"type": "object"})),
             "output": values, "budget": st.fixed_dictionaries({}, optional={
                 "max_tokens": st.integers(), "max_cost_usd": st.one_of(st.integers(), st.floats())}),
             "max_visits": st.integers(), "version": st.one_of(st.integers(), texts)}
    for key in draw(st.lists(st.sampled_from(sorted(extra)), max_size=3, unique=True)):
        document[key] = draw(extra[key])
    if draw(st.booleans()):
        document[draw(st.one_of(st.integers(), texts))] = draw(values)  # an unknown (or non-string) key
    return draw(st.one_of(st.just(document), values))  # sometimes not a mapping at all


@pytest.mark.django_db
@FUZZ
@given(document=documents())
def test_a_parsed_definition_is_stored_or_refused_with_a_definition_error(document: Any) -> None:
    try:
        result = load_workflow(document)
    except DefinitionError as exc:
        assert exc.errors and all(isinstance(path, str) and isinstance(msg, str) for path, msg in exc.errors)
        event("refused")
        return
    event("stored")
    assert Workflow.objects.filter(pk=result.workflow.pk).exists()


def _as_text(document: Any, style: str) -> str:
    try:
        if style == "json":
            return json.dumps(document, default=str)
        return yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, ValueError, RecursionError):  # the dumpers' own limits, not the code under test
        return str(document)[:10_000]


YAML_SNIPPETS = ["name: a\nsteps: [{name: s, type: task, handler: test.value}]\n",
                 "name: d\ndescription: 2026-01-01\nsteps: [{name: s, type: task, handler: test.value}]\n",
                 "name: n\nsteps: [{name: s, type: task, handler: test.value, config: {1: one}}]\n",
                 "name: b\nsteps: [{name: s, type: task, handler: test.value, config: !!binary aGk=}]\n",
                 "a: &x [1]\nb: &y [*x, *x, *x, *x, *x, *x, *x, *x]\nc: &z [*y, *y, *y, *y, *y, *y, *y, *y]\n",
                 "name: i\nsteps: [{name: s, type: task, handler: test.value, config: .inf}]\n",
                 "name: s\nsteps: [{name: s, type: task, handler: test.value, config: {x: !!set {a}}}]\n",
                 "[" * 2000 + "]" * 2000, "{" * 50, "name: x\nsteps: 3\n", "- - - -", "\x00", ""]


@pytest.mark.django_db
@FUZZ
@given(text=st.one_of(st.text(max_size=200), hostile_text, st.sampled_from(YAML_SNIPPETS),
                      st.tuples(documents(), st.sampled_from(["json", "yaml"])).map(lambda d: _as_text(*d))),
       source=st.sampled_from([None, "fuzz.yaml", "fuzz.json"]))
def test_definition_text_is_stored_or_refused_with_a_definition_error(text: str, source: str | None) -> None:
    try:
        parse_text(text, source)  # the parser alone refuses only with DefinitionError too
        result = load_workflow_text(text, source=source)
    except DefinitionError as exc:
        assert exc.errors
        event("refused")
        return
    event("stored")
    assert Workflow.objects.filter(pk=result.workflow.pk).exists()


@pytest.fixture
def input_workflows(db: Any) -> None:
    load_workflow({"name": "free", "steps": [{"name": "a", "type": "approval"}]})
    load_workflow({"name": "typed", "input_schema": {
        "type": "object", "properties": {"topic": {"type": "string"}, "n": {"type": "integer"},
                                         "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["topic"]}, "steps": [{"name": "a", "type": "approval"}]})


@FUZZ
@given(run_input=st.one_of(values, st.dictionaries(texts, values, max_size=4),
                           st.fixed_dictionaries({"topic": texts}, optional={"n": scalars, "tags": values})),
       name=st.sampled_from(["free", "typed"]))
def test_run_input_starts_a_run_or_is_refused_with_a_start_error(input_workflows: None, run_input: Any,
                                                                 name: str) -> None:
    try:
        result = start_run(name, run_input)
    except StartError as exc:
        assert exc.errors and all(path.startswith("input") for path, _ in exc.errors), exc.errors
        event("refused")
        return
    event("started")
    assert Run.objects.get(pk=result.run.pk).input == ({} if run_input is None else run_input)  # None: no input


def test_a_definition_that_only_validates_is_refused_the_same_way(db: Any) -> None:
    """``validate`` (used by load_workflows --check) and ``load_workflow`` refuse alike."""
    for document in (deep(1000), {"name": "x", "description": "\x00", "steps": []}, {"name": 5, 3: 4}):
        with pytest.raises(DefinitionError):
            validate(document)
