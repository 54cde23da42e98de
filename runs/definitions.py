"""Workflow definitions: parse YAML/JSON, validate, and normalise into a WorkflowSpec.

Validation has two layers. The published JSON Schema (``runs/schema/workflow-v1.schema.json``)
checks shapes and types; the semantic pass checks what a schema cannot: unique step
names, ``next``/``then``/``else``/``on_failure`` targets that exist in the same
sequence, registered handlers, compilable templates. Every problem is reported with
the path of the field, all at once, and nothing is stored unless there are none.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cronsim
import jsonschema
import yaml

from steps import handlers
from steps import types as step_types
from steps.jsonvalues import json_problems
from steps.templating import TemplateProblem, check_expression, check_template, step_references, walk_templates

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "workflow-v1.schema.json"
END = "end"
WORK_TYPES = frozenset({"task", "llm"})
RESERVED_NAMES = frozenset({END})
# A definition bigger than this is a mistake or an attack (YAML aliases expand without copying).
MAX_DEFINITION_VALUES = 100_000


# ``catch_up`` of a schedule trigger (runs/schema: triggers[].catch_up).
CATCH_UP_POLICIES = ("skip", "one", "all")


class DefinitionError(ValueError):
    """A definition was refused. ``errors`` is a list of (path, message)."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        lines = [f"{path or '<document>'}: {message}" for path, message in errors]
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "invalid workflow definition:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 300.0
    jitter: bool = True
    retry_on: tuple[str, ...] = ()
    non_retryable: tuple[str, ...] = ()

    def delay(self, failure_number: int, rand: float = 0.5) -> float:
        """Delay before the attempt that follows the ``failure_number``-th failure."""
        base = self.backoff_seconds * (self.backoff_multiplier ** max(failure_number - 1, 0))
        base = min(base, self.max_backoff_seconds)
        if self.jitter:
            # "Equal jitter": half fixed, half random, so the delay never collapses to 0.
            return base / 2 + base / 2 * rand
        return base


@dataclass
class StepSpec:
    name: str
    type: str
    raw: dict[str, Any]
    sequence: str  # "" for the top level, "<parallel>.<branch>" for a branch, "<map>[]" for a map item
    index: int
    retry: RetryPolicy
    max_visits: int
    timeout_seconds: float | None = None
    next: str | None = None
    on_failure: str | None = None
    branches: dict[str, list[StepSpec]] = field(default_factory=dict)
    item: StepSpec | None = None
    parent: str | None = None  # the parallel/map step owning this sequence

    @property
    def is_work(self) -> bool:
        return self.type in WORK_TYPES

    @property
    def concurrency(self) -> ConcurrencySpec | None:
        return ConcurrencySpec.of(self.raw.get("concurrency"))


@dataclass(frozen=True)
class TriggerSpec:
    """One entry of ``triggers:``: a schedule (``cron``/``every_seconds``) or an ``event``."""

    index: int
    kind: str  # "cron", "every" or "event"
    cron: str = ""
    timezone: str = "UTC"
    every_seconds: int | None = None
    catch_up: str = "one"
    event: str = ""
    key: str | None = None
    condition: str = ""  # the ``if:`` expression of an event trigger
    input: dict[str, Any] | None = None  # None: {} for a schedule, the event's payload for an event
    # Event triggers only: {period_seconds, key?, timeout_seconds?} / {limit, period_seconds, key?}.
    debounce: dict[str, Any] | None = None
    rate_limit: dict[str, Any] | None = None

    @property
    def is_schedule(self) -> bool:
        return self.kind in ("cron", "every")


PRIORITY_MIN, PRIORITY_MAX = -100, 100


@dataclass(frozen=True)
class ConcurrencySpec:
    """``concurrency: {limit: N, key: "{{ … }}"}`` of a workflow or a work step."""

    limit: int
    key: str | None = None  # a template; None: one key for the workflow (or the step)

    @classmethod
    def of(cls, raw: Any) -> ConcurrencySpec | None:
        if not isinstance(raw, dict):
            return None
        return cls(limit=int(raw["limit"]), key=raw.get("key"))


@dataclass
class WorkflowSpec:
    name: str
    description: str
    document: dict[str, Any]
    steps: list[StepSpec]
    by_name: dict[str, StepSpec]
    sequences: dict[str, list[StepSpec]]
    input_schema: dict[str, Any] | None
    output: Any
    has_output: bool
    budget: dict[str, Any]
    triggers: list[TriggerSpec] = field(default_factory=list)
    # Flow control (docs/definitions.md): the default priority of its runs, and at most
    # ``concurrency.limit`` active runs per rendered ``concurrency.key``.
    priority: int = 0
    concurrency: ConcurrencySpec | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.document)

    def following(self, step: StepSpec) -> StepSpec | None:
        seq = self.sequences[step.sequence]
        return seq[step.index + 1] if step.index + 1 < len(seq) else None


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def content_hash(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's loaders keep the last of two equal keys; in a definition that hides a typo."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_text(text: str, source: str | None = None) -> Any:
    """Parse YAML or JSON text (JSON is YAML; .json files are parsed strictly as JSON)."""
    try:
        if source and source.endswith(".json"):
            return json.loads(text, object_pairs_hook=_unique_pairs)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise DefinitionError([("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")],
                                  source) from None
        raise DefinitionError([("", f"not valid JSON: {exc}")], source) from None
    except json.JSONDecodeError as exc:
        raise DefinitionError([("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")],
                              source) from None
    except RecursionError:
        raise DefinitionError([("", "nested too deeply to parse")], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([("", f"not valid YAML: {problem}{where}")], source) from None


def _schema_errors(document: Any) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for error in _validator().iter_errors(document):
        # if/then failures wrap the real ones; report the leaves.
        leaves = _leaf_errors(error)
        wait_oneof = [leaf for leaf in leaves if leaf.validator == "oneOf" and isinstance(leaf.instance, dict)
                      and leaf.instance.get("type") == "wait"]
        for leaf in wait_oneof:
            errors.append((_path(leaf.absolute_path), "a wait step needs exactly one of 'seconds' or 'until'"))
        leaves = [leaf for leaf in leaves if leaf not in wait_oneof]
        for leaf in leaves:
            message = leaf.message
            if leaf.validator == "additionalProperties":
                message = message.replace("Additional properties are not allowed", "unknown field(s)")
            elif leaf.validator == "enum" and leaf.absolute_path and list(leaf.absolute_path)[-1] == "type":
                expected = ", ".join(str(v) for v in leaf.validator_value)  # type: ignore[union-attr]
                message = f"unknown step type {leaf.instance!r}; expected one of {expected}"
            errors.append((_path(leaf.absolute_path), message))
    # Deduplicate, keep order.
    seen: set[tuple[str, str]] = set()
    unique = []
    for item in errors:
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if error.context and error.validator != "oneOf":  # oneOf's branches are alternatives, not faults
        out: list[jsonschema.ValidationError] = []
        for sub in error.context:
            out.extend(_leaf_errors(sub))
        return out
    return [error]


class _Builder:
    def __init__(self, document: dict[str, Any], handler_exists: Any) -> None:
        self.document = document
        self.errors: list[tuple[str, str]] = []
        self.by_name: dict[str, StepSpec] = {}
        self.paths: dict[str, str] = {}
        self.sequences: dict[str, list[StepSpec]] = {}
        self.default_max_visits = int(document.get("max_visits") or _default_max_visits())
        self.handler_exists = handler_exists
        # (path, source) of every template and expression that compiled: their steps.<name>
        # references are checked once all step names are known.
        self.templates: list[tuple[str, str]] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def build_sequence(self, raw_steps: list[dict[str, Any]], sequence: str, path: str,
                       parent: str | None) -> list[StepSpec]:
        specs = []
        for i, raw in enumerate(raw_steps):
            specs.append(self.build_step(raw, sequence, i, f"{path}[{i}]", parent))
        self.sequences[sequence] = specs
        return specs

    def build_step(self, raw: dict[str, Any], sequence: str, index: int, path: str,
                   parent: str | None) -> StepSpec:
        name = raw["name"]
        retry_raw = raw.get("retry") or {}
        retry = RetryPolicy(
            max_attempts=int(retry_raw.get("max_attempts", 1)),
            backoff_seconds=float(retry_raw.get("backoff_seconds", 1.0)),
            backoff_multiplier=float(retry_raw.get("backoff_multiplier", 2.0)),
            max_backoff_seconds=float(retry_raw.get("max_backoff_seconds", 300.0)),
            jitter=bool(retry_raw.get("jitter", True)),
            retry_on=tuple(retry_raw.get("retry_on", ())),
            non_retryable=tuple(retry_raw.get("non_retryable", ())),
        )
        if retry.max_backoff_seconds < retry.backoff_seconds:
            self.error(f"{path}.retry.max_backoff_seconds", "must not be smaller than backoff_seconds")
        spec = StepSpec(
            name=name, type=raw["type"], raw=raw, sequence=sequence, index=index, retry=retry,
            max_visits=int(raw.get("max_visits") or self.default_max_visits),
            timeout_seconds=raw.get("timeout_seconds"), next=raw.get("next"),
            on_failure=raw.get("on_failure"), parent=parent,
        )
        if name in RESERVED_NAMES:
            self.error(f"{path}.name", f"{name!r} is reserved (it means: finish the sequence)")
        elif name in self.by_name:
            self.error(f"{path}.name", f"duplicate step name {name!r} (first defined at {self.paths[name]})")
        else:
            self.by_name[name] = spec
            self.paths[name] = path
        if spec.type == "parallel":
            for branch, steps in raw["branches"].items():
                spec.branches[branch] = self.build_sequence(steps, f"{name}.{branch}", f"{path}.branches.{branch}",
                                                            parent=name)
        elif spec.type == "map":
            item_raw = dict(raw["step"])
            item_raw.setdefault("name", f"{name}[]")
            item_raw["name"] = f"{name}[]"
            item_errors = _schema_errors({"name": "x", "steps": [{**item_raw, "name": "item"}]})
            for p, m in item_errors:
                self.error(f"{path}.step" + p.removeprefix("steps[0]"), m)
            for key in ("next", "on_failure"):
                if key in item_raw:
                    self.error(f"{path}.step.{key}", f"a map item has no successor; put {key!r} on the map step")
            if not item_errors:
                item = StepSpec(
                    name=f"{name}[]", type=item_raw["type"], raw=item_raw, sequence=f"{name}[]", index=0,
                    retry=self.build_step_retry(item_raw), max_visits=10**9,
                    timeout_seconds=item_raw.get("timeout_seconds"), parent=name,
                )
                spec.item = item
                self.sequences[f"{name}[]"] = [item]
                self.check_step_fields(item, f"{path}.step")
        self.check_step_fields(spec, path)
        return spec

    def build_step_retry(self, raw: dict[str, Any]) -> RetryPolicy:
        r = raw.get("retry") or {}
        return RetryPolicy(
            max_attempts=int(r.get("max_attempts", 1)), backoff_seconds=float(r.get("backoff_seconds", 1.0)),
            backoff_multiplier=float(r.get("backoff_multiplier", 2.0)),
            max_backoff_seconds=float(r.get("max_backoff_seconds", 300.0)), jitter=bool(r.get("jitter", True)),
            retry_on=tuple(r.get("retry_on", ())), non_retryable=tuple(r.get("non_retryable", ())),
        )

    def check_step_fields(self, spec: StepSpec, path: str) -> None:
        raw = spec.raw
        step_type = _step_type(spec.type)
        if step_type is not None:
            for subpath, message in step_type.check(raw, self.handler_exists):
                self.error(f"{path}{subpath}", message)
        if spec.type == "task" and self.handler_exists is not None and not self.handler_exists(raw["handler"]):
            self.error(f"{path}.handler", f"no handler registered under {raw['handler']!r}")
        if spec.type == "condition" and isinstance(raw.get("if"), str):
            self.check_expr(raw["if"], f"{path}.if")
        if spec.type == "external_event" and raw.get("match"):
            self.check_expr(raw["match"], f"{path}.match")
        if spec.type == "wait" and isinstance(raw.get("seconds"), str) and not _is_template_str(raw["seconds"]):
            self.error(f"{path}.seconds", "must be a number or a template")
        if spec.type == "map" and isinstance(raw.get("over"), str) and not _is_template_str(raw["over"]):
            self.error(f"{path}.over", "must be a list or a template that evaluates to one, "
                                       "e.g. \"{{ input.items }}\"")
        skip = {"name", "type", "if", "match", "step", "branches"}
        for key, value in raw.items():
            if key in skip:
                continue
            for tpath, source in walk_templates(value, f"{path}.{key}"):
                try:
                    check_template(source)
                except TemplateProblem as exc:
                    self.error(tpath, str(exc))
                else:
                    self.templates.append((tpath, source))

    def check_expr(self, expr: str, path: str) -> None:
        try:
            check_expression(expr)
        except TemplateProblem as exc:
            self.error(path, str(exc))
        else:  # a bare expression, read as one template expression
            self.templates.append((path, expr if "{{" in expr else "{{ " + expr + " }}"))

    def check_step_references(self) -> None:
        """``steps.<name>`` must name a step of this workflow (a typo would only fail at run time)."""
        known = sorted(self.by_name)
        for path, source in self.templates:
            for name in step_references(source):
                if name not in self.by_name:
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f" (steps: {', '.join(known)})"
                    self.error(path, f"steps.{name}: no step named {name!r} in this workflow{hint}")

    def check_targets(self) -> None:
        for name, spec in self.by_name.items():
            path = self.paths[name]
            targets = [("next", spec.next), ("on_failure", spec.on_failure)]
            if spec.type == "condition":
                targets += [("then", spec.raw.get("then")), ("else", spec.raw.get("else"))]
            for fieldname, target in targets:
                if target is None or target == END:
                    continue
                other = self.by_name.get(target)
                if other is None:
                    self.error(f"{path}.{fieldname}", f"no step named {target!r}")
                elif other.sequence != spec.sequence:
                    where = f"branch {other.sequence!r}" if other.sequence else "the top level"
                    self.error(f"{path}.{fieldname}",
                               f"step {target!r} is in {where}; a jump must stay in the same sequence")


def _step_type(name: str) -> Any:
    """The registered step type (None before the apps that plug it in are ready)."""
    return step_types.get(name)


def _is_template_str(value: str) -> bool:
    return "{{" in value


def _default_max_visits() -> int:
    try:
        from django.conf import settings

        return int(settings.STEVORA["DEFAULT_MAX_VISITS"])
    except Exception:  # settings not configured (schema tooling)
        return 10


def validate(document: Any, *, source: str | None = None, handler_exists: Any = None,
             check_references: bool = True) -> WorkflowSpec:
    """Validate a parsed document and return its spec, or raise DefinitionError.

    ``check_references=False`` skips the ``steps.<name>`` check: a version stored before
    that check existed must still run (an unknown name then fails only where it is read).
    """
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "an empty document"
        raise DefinitionError([("", f"a workflow definition must be a mapping (object), got {kind}")], source)
    # Before the schema: its validator, hashing and storage all choke on these.
    errors = json_problems(document, max_nodes=MAX_DEFINITION_VALUES)
    if errors:
        raise DefinitionError(errors, source)
    errors = _schema_errors(document)
    if errors:
        raise DefinitionError(errors, source)
    builder = _Builder(document, handler_exists)
    steps = builder.build_sequence(document["steps"], "", "steps", parent=None)
    builder.check_targets()
    if "output" in document:
        for tpath, src in walk_templates(document["output"], "output"):
            try:
                check_template(src)
            except TemplateProblem as exc:
                builder.error(tpath, str(exc))
            else:
                builder.templates.append((tpath, src))
    if check_references:
        builder.check_step_references()
    if document.get("input_schema") is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(document["input_schema"])
        except jsonschema.SchemaError as exc:
            builder.error("input_schema" + ("." + _path(exc.absolute_path) if exc.absolute_path else ""),
                          f"not a valid JSON Schema: {exc.message}")
        else:
            declared = document["input_schema"].get("type", "object")
            if declared != "object" and not (isinstance(declared, list) and "object" in declared):
                builder.error("input_schema.type", f"run input is always a JSON object, so the schema's type "
                                                   f"must be 'object', not {declared!r}")
    concurrency = document.get("concurrency")
    if isinstance(concurrency, dict) and isinstance(concurrency.get("key"), str):
        try:
            check_template(concurrency["key"])
        except TemplateProblem as exc:
            builder.error("concurrency.key", str(exc))
        else:
            for name in step_references(concurrency["key"]):
                builder.error("concurrency.key", f"steps.{name}: a run's concurrency key is decided before any "
                                                 "step runs; it may use input and run only")
    triggers = _build_triggers(document.get("triggers") or [], builder.error)
    if builder.errors:
        raise DefinitionError(builder.errors, source)
    spec = WorkflowSpec(
        name=document["name"], description=document.get("description", ""), document=document, steps=steps,
        by_name=builder.by_name, sequences=builder.sequences, input_schema=document.get("input_schema"),
        output=document.get("output"), has_output="output" in document, budget=document.get("budget") or {},
        triggers=triggers, priority=int(document.get("priority") or 0), concurrency=ConcurrencySpec.of(concurrency),
    )
    for trigger in triggers:
        # A schedule's input is fixed, so it is checked now, not at 3 a.m. when it fires; an
        # event trigger's input is checked now when it holds no template (else at delivery).
        literal = trigger.input is not None and not any(walk_templates(trigger.input, ""))
        if trigger.is_schedule or literal:
            for ipath, message in input_errors(spec, trigger.input or {}):
                builder.error(f"triggers[{trigger.index}]." + ipath, message)
    if builder.errors:
        raise DefinitionError(builder.errors, source)
    return spec


def _build_triggers(raw_triggers: list[dict[str, Any]], error: Any) -> list[TriggerSpec]:
    """The semantic pass over ``triggers:`` (the schema has checked each field's type)."""
    out: list[TriggerSpec] = []
    for i, raw in enumerate(raw_triggers):
        path = f"triggers[{i}]"
        kinds = [k for k in ("cron", "every_seconds", "event") if k in raw]
        if len(kinds) != 1:
            found = f" (found {', '.join(kinds)})" if kinds else ""
            error(path, f"a trigger needs exactly one of 'cron', 'every_seconds' or 'event'{found}")
            continue
        kind = {"cron": "cron", "every_seconds": "every", "event": "event"}[kinds[0]]
        misplaced = ([k for k in ("key", "if", "debounce", "rate_limit") if k in raw] if kind != "event"
                     else [k for k in ("timezone", "catch_up") if k in raw])
        if kind == "every" and "timezone" in raw:
            misplaced.append("timezone")
        for k in misplaced:
            owner = {"key": "an event trigger", "if": "an event trigger", "debounce": "an event trigger",
                     "rate_limit": "an event trigger", "catch_up": "a schedule (cron or "
                     "every_seconds)", "timezone": "a cron trigger"}[k]
            error(f"{path}.{k}", f"only {owner} takes {k!r}")
        tz = raw.get("timezone", "UTC")
        if kind == "cron":
            if not _valid_timezone(tz):
                error(f"{path}.timezone", f"unknown time zone {tz!r}; use an IANA name such as 'Europe/Berlin' "
                                          f"or 'UTC'")
            problem = cron_problem(raw["cron"])
            if problem:
                error(f"{path}.cron", problem)
        condition = raw.get("if", "")
        if condition:
            try:
                check_expression(condition)
            except TemplateProblem as exc:
                error(f"{path}.if", str(exc))
        if "input" in raw:
            for tpath, source in walk_templates(raw["input"], f"{path}.input"):
                if kind != "event":
                    error(tpath, "a schedule's input is fixed: templates are for event triggers")
                    continue
                try:
                    check_template(source)
                except TemplateProblem as exc:
                    error(tpath, str(exc))
        if "debounce" in raw and "rate_limit" in raw:
            error(f"{path}.rate_limit", "a trigger takes debounce or rate_limit, not both")
        for option in ("debounce", "rate_limit"):
            template = (raw.get(option) or {}).get("key")
            if template:
                try:
                    check_template(template)
                except TemplateProblem as exc:
                    error(f"{path}.{option}.key", str(exc))
        debounce = raw.get("debounce")
        if debounce and debounce.get("timeout_seconds") is not None \
                and debounce["timeout_seconds"] < debounce["period_seconds"]:
            error(f"{path}.debounce.timeout_seconds", "must be at least period_seconds")
        key = raw.get("key")
        out.append(TriggerSpec(
            index=i, kind=kind, cron=raw.get("cron", ""), timezone=tz, every_seconds=raw.get("every_seconds"),
            catch_up=raw.get("catch_up", "one"), event=raw.get("event", ""),
            key=str(key) if key is not None else None, condition=condition, input=raw.get("input"),
            debounce=debounce, rate_limit=raw.get("rate_limit"),
        ))
    return out


def _valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a cron expression we run, or None."""
    if len(expression.split()) != 5:
        return (f"{expression!r} is not a five-field cron expression (minute hour day-of-month month "
                f"day-of-week), e.g. '*/5 * * * *'")
    try:
        cronsim.CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except cronsim.CronSimError as exc:
        return f"not a valid cron expression {expression!r}: {exc}"
    return None


def handler_registered(name: str) -> bool:
    return name in handlers.registry


@functools.lru_cache(maxsize=512)
def _cached_spec(workflow_id: int, digest: str) -> WorkflowSpec:
    from .models import Workflow

    workflow = Workflow.objects.get(pk=workflow_id)
    return validate(workflow.definition, check_references=False)


def spec_for(workflow: Any) -> WorkflowSpec:
    """The parsed spec of a stored (immutable) workflow version, cached per process."""
    return _cached_spec(workflow.pk, workflow.content_hash)


def input_errors(spec: WorkflowSpec, run_input: Any) -> list[tuple[str, str]]:
    if not isinstance(run_input, dict):
        return [("input", f"run input must be a JSON object, got {type(run_input).__name__}")]
    hostile = json_problems(run_input, "input")
    if hostile:
        return hostile
    if not spec.input_schema:
        return []
    validator = jsonschema.Draft202012Validator(spec.input_schema)
    return [
        (_path(["input", *e.absolute_path]), e.message)
        for e in sorted(validator.iter_errors(run_input), key=lambda e: list(map(str, e.absolute_path)))
    ]
