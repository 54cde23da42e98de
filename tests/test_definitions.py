"""Workflow definitions: what loads, what is refused (with the path of the bad field), versions,
and the template sandbox (DESIGN §7, docs/definitions.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from runs.definitions import DefinitionError, handler_registered, validate
from runs.models import Run, Workflow
from runs.services import StartError, load_workflow, load_workflow_text, start_run
from steps.templating import TemplateProblem, check_template, evaluate, render_value, step_references
from tests.support.workers import ROOT, subprocess_env

YAML_DOC = """
name: order-pipeline
description: fetch, check, summarise
input_schema:
  type: object
  required: [url]
  properties: {url: {type: string}, sources: {type: array}}
output: "{{ steps.summarize.output }}"
steps:
  - name: fetch
    type: task
    handler: echo
    config: {url: "{{ input.url }}", status: 200}
    retry: {max_attempts: 5, backoff_seconds: 1, backoff_multiplier: 2, max_backoff_seconds: 60}
    timeout_seconds: 30
    on_failure: give-up
  - name: check
    type: condition
    if: "steps.fetch.output.status == 200"
    then: nap
    else: give-up
  - name: nap
    type: wait
    seconds: 5
  - name: gather
    type: map
    over: "{{ input.sources }}"
    max_concurrency: 5
    step: {type: task, handler: echo, config: {url: "{{ item }}"}}
  - name: both
    type: parallel
    branches:
      a: [{name: a1, type: task, handler: noop}]
      b: [{name: b1, type: task, handler: noop}, {name: b2, type: wait, until: "{{ input.when }}"}]
  - name: sub
    type: workflow
    workflow: other-name
    input: {x: "{{ steps.fetch.output }}"}
  - name: summarize
    type: task
    handler: echo
    next: end
  - name: give-up
    type: task
    handler: noop
"""


def task(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "task", "handler": "noop", **fields}


def refusal(document: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        validate(document, handler_exists=handler_registered)
    return info.value.errors


def paths(document: Any) -> list[str]:
    return [path for path, _ in refusal(document)]


def doc(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "w", "steps": list(steps), **top}


# --- valid documents ----------------------------------------------------------------------


def test_a_yaml_document_with_every_step_type_loads(db: Any) -> None:
    result = load_workflow_text(YAML_DOC, source="order.yaml")
    assert result.created
    assert (result.workflow.name, result.workflow.version) == ("order-pipeline", 1)
    assert result.workflow.definition["steps"][0]["retry"]["max_attempts"] == 5


def test_the_same_document_as_json_loads_and_is_the_same_version(db: Any) -> None:
    import yaml

    first = load_workflow_text(YAML_DOC, source="order.yaml")
    as_json = json.dumps(yaml.safe_load(YAML_DOC))
    second = load_workflow_text(as_json, source="order.json")
    assert not second.created
    assert second.workflow.pk == first.workflow.pk


def test_json_files_are_parsed_strictly_and_errors_say_where(db: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        load_workflow_text('{"name": "x", "steps": [,]}', source="bad.json")
    assert "bad.json" in str(info.value) and "not valid JSON" in str(info.value)
    with pytest.raises(DefinitionError) as info:
        load_workflow_text("name: x\nsteps: [\n", source="bad.yaml")
    assert "not valid YAML" in str(info.value) and "line" in str(info.value)


def test_duplicate_keys_are_refused_instead_of_silently_keeping_the_last(db: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        load_workflow_text("name: x\nsteps:\n  - name: a\n    type: task\n    handler: noop\n    handler: echo\n",
                           source="dup.yaml")
    assert "duplicate key 'handler'" in str(info.value) and "line 6" in str(info.value)
    with pytest.raises(DefinitionError) as info:
        load_workflow_text('{"name": "x", "name": "y", "steps": []}', source="dup.json")
    assert "duplicate key 'name'" in str(info.value)
    assert not Workflow.objects.exists()


# --- each kind of mistake, refused with its path ---------------------------------------------


def test_an_unknown_step_type_is_refused_with_its_path() -> None:
    [(path, message)] = refusal(doc({"name": "a", "type": "teleport"}))
    assert path == "steps[0].type"
    assert "unknown step type 'teleport'" in message


def test_a_duplicate_step_name_is_refused_with_both_places() -> None:
    [(path, message)] = refusal(doc(task("a"), task("b"), task("a")))
    assert path == "steps[2].name"
    assert "duplicate step name 'a'" in message and "steps[0]" in message


def test_a_duplicate_name_inside_a_parallel_branch_is_refused() -> None:
    document = doc(task("a"), {"name": "p", "type": "parallel", "branches": {"x": [task("a")]}})
    assert paths(document) == ["steps[1].branches.x[0].name"]


@pytest.mark.parametrize("field", ["next", "on_failure"])
def test_a_dangling_jump_is_refused_with_its_path(field: str) -> None:
    [(path, message)] = refusal(doc(task("a", **{field: "nowhere"}), task("b")))
    assert path == f"steps[0].{field}"
    assert "no step named 'nowhere'" in message


def test_dangling_then_and_else_are_both_reported() -> None:
    condition = {"name": "c", "type": "condition", "if": "true", "then": "yes", "else": "no"}
    assert paths(doc(condition, task("b"))) == ["steps[0].then", "steps[0].else"]


def test_end_is_a_valid_target_and_a_reserved_name() -> None:
    validate(doc(task("a", next="end"), task("b")), handler_exists=handler_registered)
    assert paths(doc(task("end"))) == ["steps[0].name"]


def test_jumps_across_sequences_are_refused_both_ways() -> None:
    document = doc(
        task("top", next="a1"),
        {"name": "p", "type": "parallel", "branches": {
            "a": [task("a1", next="b1")],
            "b": [task("b1", on_failure="top")],
        }},
    )
    errors = dict(refusal(document))
    assert set(errors) == {"steps[0].next", "steps[1].branches.a[0].next", "steps[1].branches.b[0].on_failure"}
    assert "same sequence" in errors["steps[0].next"]


@pytest.mark.parametrize("source, fragment", [
    ("{{ input.url ", "invalid template"),
    ("{% if %}yes{% endif %}", "invalid template"),
    ("{{ input.url | no_such_filter }}", "no_such_filter"),
    ("{% for x in input.list %}{{ x }}", "invalid template"),
])
def test_bad_template_syntax_is_refused_with_its_path(source: str, fragment: str) -> None:
    [(path, message)] = refusal(doc(task("a", config={"headers": {"x": [1, source]}})))
    assert path == "steps[0].config.headers.x[1]"
    assert fragment in message


def test_bad_expressions_in_conditions_and_output_are_refused_with_their_paths() -> None:
    condition = {"name": "c", "type": "condition", "if": "steps.a.output ==", "then": "end"}
    errors = refusal(doc(task("a"), condition, output="{{ steps.a.output "))
    assert [p for p, _ in errors] == ["steps[1].if", "output"]


@pytest.mark.parametrize("retry, bad_path", [
    ({"max_attempts": 0}, "steps[0].retry.max_attempts"),
    ({"max_attempts": "3"}, "steps[0].retry.max_attempts"),
    ({"max_attempts": 1.5}, "steps[0].retry.max_attempts"),
    ({"backoff_seconds": -1}, "steps[0].retry.backoff_seconds"),
    ({"backoff_multiplier": 0.5}, "steps[0].retry.backoff_multiplier"),
    ({"backoff_seconds": 10, "max_backoff_seconds": 1}, "steps[0].retry.max_backoff_seconds"),
    ({"jitter": "yes"}, "steps[0].retry.jitter"),
    ({"retries": 3}, "steps[0].retry"),
])
def test_bad_retry_values_are_refused_with_their_path(retry: dict[str, Any], bad_path: str) -> None:
    assert paths(doc(task("a", retry=retry))) == [bad_path]


def test_bad_timeouts_and_visit_limits_are_refused() -> None:
    assert paths(doc(task("a", timeout_seconds=0), task("b", max_visits=0))) == [
        "steps[0].timeout_seconds", "steps[1].max_visits"]


def test_an_unknown_handler_is_refused_with_its_path_also_inside_a_map() -> None:
    mapped = {"name": "m", "type": "map", "over": "{{ input.xs }}", "step": {"type": "task", "handler": "nope2"}}
    errors = refusal(doc({"name": "a", "type": "task", "handler": "nope"}, mapped))
    assert errors == [("steps[0].handler", "no handler registered under 'nope'"),
                      ("steps[1].step.handler", "no handler registered under 'nope2'")]


def test_an_input_schema_that_is_not_a_json_schema_is_refused() -> None:
    assert paths(doc(task("a"), input_schema={"type": "objekt"})) == ["input_schema.type"]
    assert paths(doc(task("a"), input_schema=["not", "an", "object"])) == ["input_schema"]


def test_an_input_schema_for_non_object_input_is_refused() -> None:
    [(path, message)] = refusal(doc(task("a"), input_schema={"type": "array"}))
    assert path == "input_schema.type"
    assert "always a JSON object" in message


def test_non_object_run_input_is_refused_with_its_path(db: Any) -> None:
    load_workflow(doc(task("a"), input_schema={"type": "object", "required": ["n"],
                                               "properties": {"n": {"type": "integer"}}}))
    for bad in ([1, 2], "text", 5):
        with pytest.raises(StartError) as info:
            start_run("w", bad)
        assert [p for p, _ in info.value.errors] == ["input"]
    with pytest.raises(StartError) as info:
        start_run("w", {"n": "five"})
    assert info.value.errors == [("input.n", "'five' is not of type 'integer'")]
    assert not Run.objects.exists()


def test_map_and_wait_fields_are_checked() -> None:
    errors = dict(refusal(doc(
        {"name": "m", "type": "map", "over": "input.xs", "step": {"type": "task", "handler": "noop", "next": "x"}},
        {"name": "w1", "type": "wait", "seconds": "soon"},
    )))
    assert set(errors) == {"steps[0].over", "steps[0].step.next", "steps[1].seconds"}
    assert paths(doc({"name": "w2", "type": "wait"})) == ["steps[0]"]
    assert paths(doc({"name": "w3", "type": "wait", "seconds": 1, "until": "2030-01-01T00:00:00Z"})) == ["steps[0]"]


def test_unknown_fields_and_missing_fields_are_refused() -> None:
    errors = dict(refusal({"name": "w", "steps": [task("a", bogus=1), {"type": "task", "handler": "noop"}],
                           "extra": True}))
    assert "unknown field" in errors["steps[0]"] and "bogus" in errors["steps[0]"]
    assert "'name' is a required property" in errors["steps[1]"]
    assert "extra" in errors[""]


def test_every_mistake_is_reported_at_once_and_nothing_is_stored(db: Any) -> None:
    document = doc(task("a", next="zz"), task("a"), {"name": "x", "type": "task", "handler": "nope",
                                                     "config": "{{ oops"})
    with pytest.raises(DefinitionError) as info:
        load_workflow(document)
    assert len(info.value.errors) == 4
    assert not Workflow.objects.exists()


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert refusal([1, 2]) == [("", "a workflow definition must be a mapping (object), got list")]
    assert "empty document" in refusal(None)[0][1]


# --- versions ---------------------------------------------------------------------------------


def test_loading_the_same_document_twice_is_a_no_op(db: Any) -> None:
    first = load_workflow(doc(task("a")))
    again = load_workflow(doc(task("a")))
    assert first.created and not again.created
    assert again.workflow.pk == first.workflow.pk
    assert Workflow.objects.count() == 1


def test_a_changed_document_becomes_the_next_version_and_runs_keep_theirs(db: Any) -> None:
    v1 = load_workflow(doc(task("a"))).workflow
    run = start_run("w", {}).run
    v2 = load_workflow(doc(task("a"), task("b"))).workflow
    assert (v1.version, v2.version) == (1, 2)
    run.refresh_from_db()
    assert run.workflow_id == v1.pk
    assert start_run("w", {}).run.workflow_id == v2.pk
    assert start_run("w", {}, version=1).run.workflow_id == v1.pk
    # Going back to the first content is the first version again, not a third.
    assert load_workflow(doc(task("a"))).workflow.pk == v1.pk


def test_concurrent_loads_store_each_content_once(transactional_db: Any) -> None:
    import threading

    from django.db import connection

    documents = [doc(task("a")), doc(task("b"))] * 3
    barrier = threading.Barrier(len(documents))
    results: list[Any] = []

    def load(document: dict[str, Any]) -> None:
        try:
            barrier.wait()
            results.append(load_workflow(document).workflow)
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=load, args=(d,)) for d in documents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(Workflow.objects.values_list("version", flat=True)) == [1, 2]
    assert len({r.pk for r in results}) == 2


# --- the sandbox ----------------------------------------------------------------------------

INJECTIONS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ request|attr('__class__') }}",
    "{{ input|attr('__class__')|attr('__mro__') }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ '{0.__class__}'.format(input) }}",
    "{{ '{0.__class__.__mro__}'.format(input) }}",
    "{{ '{x[__class__]}'.format_map({'x': input}) }}",
    "{{ input['__class__'] }}",
    "{{ steps.__init__ }}",
    "{% set x = input.__class__ %}{{ x }}",
    "{{ input.xs|map(attribute='__class__')|list }}",
    "{{ input.xs|sort(attribute='a.__class__') }}",
    "{{ input.xs|selectattr('__class__')|list }}",
    "{{ input.xs|groupby('__dict__') }}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_template_injection_payloads_are_refused_at_load_time_with_their_path(payload: str) -> None:
    [(path, message)] = refusal(doc(task("a", config={"x": payload})))
    assert path == "steps[0].config.x"
    assert "not allowed" in message


@pytest.mark.parametrize("payload", INJECTIONS)
def test_template_injection_payloads_are_refused_at_render_time(payload: str) -> None:
    with pytest.raises(TemplateProblem):
        render_value(payload, {"input": {"a": 1}, "steps": {}, "run": {}})


@pytest.mark.parametrize("payload", [
    "{{ input|attr(input.name) }}",
    "{{ ''|attr('__cla' ~ 'ss__') }}",
    "{{ (input|attr(input.name))|attr('mro') }}",
    "{{ input.fmt.format(input) }}",
    "Hello {{ input|attr(input.name) }}",
    "{{ [input|attr(input.name)] }}",
])
def test_dynamically_built_payloads_are_refused_by_the_sandbox_at_render_time(payload: str) -> None:
    check_template(payload)  # nothing to see until it runs
    context = {"input": {"name": "__class__", "fmt": "{0.__class__}"}, "steps": {}, "run": {}}
    with pytest.raises(TemplateProblem) as info:
        render_value(payload, context)
    assert "sandbox" in str(info.value) or "undefined" in str(info.value)


def test_dynamic_payloads_in_conditions_are_refused_too() -> None:
    with pytest.raises(TemplateProblem):
        evaluate("input|attr(input.name)", {"input": {"name": "__class__"}})


@pytest.mark.parametrize("payload", [
    "{{ 'a' * 100000000 }}",
    "{{ [1] * 100000000 }}",
    "{{ 10 ** 10000000 }}",
    "{{ range(10 ** 9)|list }}",
    "{{ input.items.pop() }}",
    "{{ [].append(1) }}",
])
def test_resource_and_mutation_payloads_are_refused_at_render_time(payload: str) -> None:
    with pytest.raises(TemplateProblem):
        render_value(payload, {"input": {"items": [1, 2]}})


def test_python_objects_never_leak_out_of_a_template() -> None:
    for payload in ("{{ namespace }}", "{{ self }}", "{{ input.keys() }}", "{{ range }}"):
        with pytest.raises(TemplateProblem) as info:
            render_value(payload, {"input": {}})
        assert "not JSON data" in str(info.value) or "undefined" in str(info.value)


# --- typed values and strictness ----------------------------------------------------------------


def test_a_single_expression_keeps_its_type() -> None:
    context = {"input": {"items": [1, 2, 3], "n": 5, "flag": False, "obj": {"a": [None]}}}
    assert render_value("{{ input.items }}", context) == [1, 2, 3]
    assert render_value("  {{ input.n * 2 }} ", context) == 10
    assert render_value("{{ input.flag }}", context) is False
    assert render_value("{{ input.obj }}", context) == {"a": [None]}
    assert render_value("{{ input['items'][1:] }}", context) == [2, 3]
    assert render_value({"nested": ["{{ input.n }}", "n={{ input.n }}"]}, context) == {"nested": [5, "n=5"]}
    assert render_value("{{ input.n }} and {{ input.n }}", context) == "5 and 5"
    assert render_value("{{ input.obj|tojson }}", context) == '{"a": [null]}'


def test_keys_named_like_dict_methods_mean_the_keys() -> None:
    context = {"input": {"items": [1], "keys": "k", "values": 3}}
    assert render_value("{{ input.items }}", context) == [1]
    assert render_value("{{ input.keys }}-{{ input.values }}", context) == "k-3"


def test_undefined_names_fail_clearly_in_every_form() -> None:
    context = {"input": {"a": 1}, "steps": {}}
    for template in ("{{ input.b }}", "x {{ input.b }}", "{{ [input.b] }}"):
        with pytest.raises(TemplateProblem) as info:
            render_value(template, context)
        assert "undefined" in str(info.value) or "has no attribute" in str(info.value)
    # A step that has not run is said in the workflow's terms, not as an engine class's attribute.
    for template in ("{{ steps.fetch.output }}", "x {{ steps['fetch'].output.y }}"):
        with pytest.raises(TemplateProblem, match="step 'fetch' has no output yet") as info:
            render_value(template, context)
        assert "View" not in str(info.value) and "attribute" not in str(info.value)
    with pytest.raises(TemplateProblem):
        evaluate("input.b == 1", context)
    with pytest.raises(TemplateProblem):
        evaluate("input.b", context)


def test_errors_inside_expressions_become_template_problems() -> None:
    for template in ("{{ 1 / 0 }}", "x {{ 1 // 0 }}", "{{ input.a + 'x' }}", "{{ input.a[3] }}"):
        with pytest.raises(TemplateProblem):
            render_value(template, {"input": {"a": 1}})


# --- the load_workflows command ----------------------------------------------------------------


def test_load_workflows_prints_name_and_version_and_skips_unchanged(db: Any, tmp_path: Path) -> None:
    from io import StringIO

    (tmp_path / "a.yaml").write_text("name: wa\nsteps: [{name: s, type: task, handler: noop}]\n")
    (tmp_path / "b.json").write_text(json.dumps(doc(task("s")) | {"name": "wb"}))
    (tmp_path / "notes.txt").write_text("ignored")
    out = StringIO()
    call_command("load_workflows", str(tmp_path), stdout=out)
    assert out.getvalue().split("\n")[:2] == ["wa v1", "wb v1"]
    out = StringIO()
    call_command("load_workflows", str(tmp_path / "a.yaml"), stdout=out)
    assert out.getvalue().strip() == "wa v1 (unchanged)"


def test_load_workflows_with_a_bad_file_names_file_and_path_and_stores_nothing(db: Any, tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("name: good\nsteps: [{name: s, type: task, handler: noop}]\n")
    (tmp_path / "bad.yaml").write_text("name: bad\nsteps: [{name: s, type: task, handler: noop, next: zz}]\n")
    with pytest.raises(CommandError) as info:
        call_command("load_workflows", str(tmp_path))
    assert "bad.yaml" in str(info.value) and "steps[0].next" in str(info.value)
    assert "nothing was stored" in str(info.value)
    assert not Workflow.objects.exists()


def test_load_workflows_exits_non_zero_for_bad_files(transactional_db: Any, tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nsteps: [{name: s, type: nope}]\n")
    done = subprocess.run([sys.executable, "manage.py", "load_workflows", str(bad)], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert str(bad) in done.stderr and "steps[0].type" in done.stderr
    missing = subprocess.run([sys.executable, "manage.py", "load_workflows", str(tmp_path / "nope.yaml")],
                             cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert not Workflow.objects.exists()


def test_every_complete_example_in_the_definitions_doc_loads(db: Any) -> None:
    import re

    import yaml

    text = (ROOT / "docs" / "definitions.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)]
    documents = [b for b in blocks if isinstance(b, dict) and "steps" in b and "name" in b]
    assert {d["name"] for d in documents} >= {"triage", "escalate", "countdown", "fetch-or-fallback"}
    for document in documents:
        load_workflow(document)
    # The fragments (single steps) are valid steps too.
    fragments = [b for b in blocks if isinstance(b, list)]
    for i, steps in enumerate(fragments):
        for step in steps:
            if step.get("type") == "task" and not handler_registered(step["handler"]):
                step["handler"] = "noop"
            if step.get("type") == "parallel":
                for branch in step["branches"].values():
                    for inner in branch:
                        inner["handler"] = "noop"
            if step.get("type") == "map":
                step["step"]["handler"] = "noop"
        nexts = {s.get(k) for s in steps for k in ("then", "else", "next", "on_failure")} - {None, "end"}
        # Steps the fragment's templates and conditions read (steps.<name>) exist in the whole workflow.
        read = {name for s in steps for text in _strings(s)
                for name in step_references(text if "{{" in text else "{{ " + text + " }}")}
        defined = {name for s in steps for name in _names(s)}  # step names anywhere in it (branches too)
        padding = [task(name) for name in sorted((nexts | read) - defined)]
        validate({"name": f"fragment{i}", "steps": steps + padding}, handler_exists=handler_registered)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for v in value.values() for text in _strings(v)]
    if isinstance(value, list):
        return [text for v in value for text in _strings(v)]
    return []


def _names(value: Any) -> list[str]:
    """Every ``name`` of a step or of the steps nested in it."""
    if isinstance(value, list):
        return [name for v in value for name in _names(v)]
    if not isinstance(value, dict):
        return []
    own = [value["name"]] if isinstance(value.get("name"), str) and "type" in value else []
    return own + [name for v in value.values() for name in _names(v)]
