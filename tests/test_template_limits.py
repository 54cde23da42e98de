"""Templates cannot build huge strings, loop without end or run past their deadline.

Conditions and output templates are evaluated while a run's row is locked, so each
payload below must be refused with a message naming the limit, without allocating
anything near what it asks for. Rendering happens in this process, so the allocation
is measured with tracemalloc (a resource assertion, not a timing one).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from steps import template_limits as limits
from steps.templating import TemplateProblem, evaluate, render_value

# The same in every backend: runs in the embedded pass only (bin/test).
pytestmark = pytest.mark.backend_independent

CONTEXT: dict[str, Any] = {"input": {"items": [1, 2, 3], "name": "ada"}, "steps": {}, "run": {"id": "r"}}
# Far below what any payload here asks for (286-858 MiB before these limits), comfortably
# above the few MiB a refused operation may hold (at most a small multiple of MAX_STRING).
PEAK_BYTES = 48 * 1024 * 1024

STRING = "more than the string limit (1000000)"
LOOPS = "the loop limit"
BUDGET = "the render output budget"
RANGE = "more than the range limit (100000)"
INTEGER = "the integer limit"

PAYLOADS = [
    # str methods, sized from their arguments before they run
    ("{{ 'x'.ljust(3e8) }}", STRING),
    ("{{ 'x'.rjust(300000000) }}", STRING),
    ("{{ 'x'.center(300000000) }}", STRING),
    ("{{ 'x'.zfill(300000000) }}", STRING),
    ("{{ ('\\t' * 1000).expandtabs(1000000) }}", STRING),
    ("{{ ('x' * 1000).replace('x', 'y' * 1000000) }}", STRING),
    ("{{ 'xy'.replace('', 'z' * 1000000) }}", STRING),
    ("{{ ('y' * 1000000).join(['a', 'b', 'c']) }}", STRING),
    ("{{ 'x'.encode().ljust(300000000) }}", STRING),
    ("{{ ('x' * 1000).translate({120: 'y' * 100000}) }}", STRING),
    # format strings
    ("{{ '{:>300000000}'.format('x') }}", STRING),
    ("{{ '{0:.300000000f}'.format(1.5) }}", STRING),
    ("{{ ('{0}' * 1000).format('y' * 100000) }}", STRING),
    ("{{ '{a:>300000000}'.format_map({'a': 'x'}) }}", STRING),
    ("{{ '%300000000s' % 'x' }}", STRING),
    ("{{ '%.300000000f' % 1.5 }}", STRING),
    ("{{ ('%s' * 1000) % (('y' * 100000,) * 1000) }}", STRING),
    ("{{ '%*s' % (300000000, 'x') }}", "'*' widths in %-formatting are not supported"),
    # filters
    ("{{ 'x'|center(3e8) }}", STRING),
    ("{{ ('a\\n' * 1000)|indent(1000000) }}", STRING),
    ("{{ ('a\\n' * 1000)|indent('y' * 100000) }}", STRING),
    ("{{ ('a ' * 100000)|wordwrap(1, wrapstring='y' * 1000) }}", STRING),
    ("{{ '%300000000s'|format('x') }}", STRING),
    ("{{ range(1000)|join('y' * 1000000) }}", STRING),
    ("{{ ('x' * 1000)|replace('x', 'y' * 1000000) }}", STRING),
    ("{{ [1]|batch(300000000, 0)|list }}", STRING),
    ("{{ [1]|slice(300000000)|list }}", STRING),
    ("{{ ([['x'] * 1000000] * 1000)|sum(start=[]) }}", STRING),
    ("{{ ('\u00df' * 1000000)|upper }}", STRING),  # grows 2x: checked on its result
    ("{{ input|tojson(indent=300000000) }}", "tojson indent must be a number from 0 to 16"),
    ("{{ range(300)|map('center', 300000000)|list }}", STRING),
    # operators
    ("{{ 'x' * 300000000 }}", STRING),
    ("{{ [1] * 300000000 }}", STRING),
    ("{{ 'x' * 1000000 ~ 'x' * 1000000 }}", STRING),
    ("{{ 'x' * 1000000 + 'x' }}", STRING),
    ("{{ [0] * 1000000 + [1] }}", STRING),
    ("{{ 2 ** 100000000 }}", "the exponent limit"),
    ("{{ (9 ** 999) ** 999 }}", INTEGER),
    ("{{ (9 ** 999 * 9 ** 999 * 9 ** 999) * (9 ** 999 * 9 ** 999) ** 20 }}", INTEGER),
    # doubling in a loop: each step is sized, so the first one past the limit stops it
    ("{% set ns = namespace(s='x' * 600000) %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s|length }}", STRING),
    # one long string referenced many times: cheap to build, huge to print
    ("{{ ['x' * 1000000] * 1000 }}", "'*' (counting the characters its items hold)"),
    ("{% set b = 'x' * 600000 %}{{ [b, b] }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ [b, b] ~ '' }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ [b, b]|tojson }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ [b, b]|string }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ [[b, b]]|join }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ '{}'.format([b, b]) }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ '%s' % ([b, b],) }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ '%r' % ([b, b],) }}", STRING),
    ("{% set b = 'x' * 600000 %}{{ dict(a=b, c=b)|pprint }}", STRING),
    ("{% set ns = namespace(l=[]) %}{% for i in range(100) %}{% set ns.l = ns.l + ['x' * 600000] %}"
     "{% endfor %}", BUDGET),
    # loops and ranges
    ("{{ range(300000000)|list }}", RANGE),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", LOOPS),
    ("{% for i in range(1000) %}{% for j in range(1000) %}{{ j }}{% endfor %}{% endfor %}", LOOPS),
    ("{% for x in [1, 1] recursive %}{{ loop([1, 1]) }}{% endfor %}", "RecursionError"),
    ("{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
    # what a render builds in total
    ("{% for i in range(50)|stevora_loop(-3000000) %}{{ 'x' * 999999 }}{% endfor %}", BUDGET),
    ("{% for i in range(50) %}{{ 'x' * 999999 }}{% endfor %}", BUDGET),
    ("{% for i in range(100000) %}" + "literal text " * 100 + "{% endfor %}", BUDGET),
]


def _measured(render: Callable[[], Any]) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        render()
        error: BaseException | None = None
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever came out
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("template, limit", PAYLOADS)
def test_each_payload_is_refused_naming_the_limit_without_allocating_it(
        template: str, limit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each payload names the limit that must stop it; on a loaded machine (tracemalloc slows
    # the render several times) the one-second wall-clock deadline could come first.
    monkeypatch.setattr(limits, "DEADLINE_SECONDS", 120.0)
    error, peak = _measured(lambda: render_value(template, CONTEXT))
    assert isinstance(error, TemplateProblem), f"not refused: {error!r}"
    assert limit in str(error)
    assert peak < PEAK_BYTES, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("expression, limit", [
    ("'x'.ljust(3e8) == ''", STRING),
    ("('%300000000s' % 'x')|length > 0", STRING),
    ("range(300000000)|list|length", RANGE),
    ("'x'|center(3e8) ~ input.name", STRING),
])
def test_conditions_have_the_same_limits(expression: str, limit: str) -> None:
    error, peak = _measured(lambda: evaluate(expression, CONTEXT))
    assert isinstance(error, TemplateProblem) and limit in str(error)
    assert peak < PEAK_BYTES


def test_a_typed_value_holding_too_much_is_refused_before_it_is_stored() -> None:
    big = {**CONTEXT, "input": {"big": "x" * 1_000_000}}
    template = "{{ [" + ", ".join(["input.big"] * 11) + "] }}"
    error, peak = _measured(lambda: render_value(template, big))
    assert isinstance(error, TemplateProblem) and "holds more than 10000000 characters" in str(error)
    assert peak < PEAK_BYTES
    assert render_value("{{ [input.big, input.big] }}", big) == ["x" * 1_000_000] * 2  # within the budget


def test_a_render_that_runs_past_its_deadline_is_stopped() -> None:
    # Each iteration sorts 100,000 numbers: 5,000 iterations (the loop limit counts the
    # range call too) would take many seconds; the deadline stops it first.
    template = "{% for i in range(100000) %}{{ range(100000)|list|sort|reverse|list|length }}{% endfor %}"
    error, peak = _measured(lambda: render_value(template, CONTEXT))
    assert isinstance(error, TemplateProblem)
    assert f"the render deadline ({limits.DEADLINE_SECONDS:g} s)" in str(error)
    assert peak < PEAK_BYTES


def test_the_loop_limit_counts_every_loop_of_a_render_together() -> None:
    # Two sibling loops of 6,000 each are fine on their own, not together.
    one = "{% for i in range(6000) %}{% endfor %}done"
    assert render_value(one, CONTEXT) == "done"
    with pytest.raises(TemplateProblem, match=LOOPS):
        render_value({"a": one, "b": one}, CONTEXT)


def test_templates_within_the_limits_render_as_before() -> None:
    assert render_value("{{ 'x'.ljust(5, '.') }}|{{ '%-4s' % 'ab' }}|{{ '{:>3}'.format(7) }}", CONTEXT) == \
        "x....|ab  |  7"
    assert render_value("{{ input.items|join(', ') }} {{ 'a-b'.replace('-', '+') }}", CONTEXT) == "1, 2, 3 a+b"
    assert render_value("{{ input.name|center(7) ~ '|' }}", CONTEXT) == "  ada  |"
    assert render_value("{{ 'x' * 1000000 }}", CONTEXT) == "x" * 1_000_000  # exactly the limit
    assert render_value("{{ [[1], [2]]|sum(start=[]) }}", CONTEXT) == [1, 2]
    assert render_value("{{ 'a %s %d'|format('b', 3) }}", CONTEXT) == "a b 3"
    assert render_value("{% for x in input.items %}{{ loop.index }}/{{ loop.length }} {% endfor %}",
                        CONTEXT) == "1/3 2/3 3/3 "
    assert render_value("{{ [1, 2]|batch(3, 0)|list }}", CONTEXT) == [[1, 2, 0]]
    assert render_value("{{ 'abcdef'|truncate(3e8) }}", CONTEXT) == "abcdef"  # bounded by its input
    assert evaluate("input.items|length == 3 and 'ad' ~ 'a' == input.name", CONTEXT) is True
    assert render_value("{{ 2 ** 10 }} {{ 12345678901234567890 * 98765432109876543210 }}", CONTEXT) == \
        "1024 1219326311370217952237463801111263526900"


def test_the_limits_are_the_documented_ones() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "definitions.md").read_text()
    for value in ("1,000,000 characters", "10,000 loop iterations", "10,000,000 characters", "1 second",
                  "100,000 numbers", "100,000 bits"):
        assert value in doc
    assert (limits.MAX_STRING, limits.MAX_STEPS, limits.MAX_PRODUCED, limits.DEADLINE_SECONDS, limits.MAX_RANGE,
            limits.MAX_INT_BITS) == (1_000_000, 10_000, 10_000_000, 1.0, 100_000, 100_000)


# --- in a real engine: conditions and outputs are evaluated under the run's row lock --------


@pytest.mark.parametrize("steps, output, expected", [
    ([{"name": "c", "type": "condition", "if": "'x'.ljust(3e8) == input.x", "then": "end"}], None,
     "str.ljust() would build 300000000 characters, more than the string limit (1000000)"),
    ([{"name": "c", "type": "condition", "if": "'%300000000s' % input.x", "then": "end"}], None,
     "%-formatting would build"),
    ([], {"text": "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"},
     "output: template"),
])
def test_a_run_whose_condition_or_output_hits_a_limit_fails_with_the_reason(
        engine: Any, workflow: Any, steps: list[dict[str, Any]], output: Any, expected: str) -> None:
    from runs.services import start_run
    from tests.conftest import wait_for_run

    definition: dict[str, Any] = {"name": "greedy-template",
                                  "steps": [{"name": "a", "type": "task", "handler": "noop"}, *steps]}
    if output is not None:
        definition["output"] = output
    workflow(definition)
    run = wait_for_run(start_run("greedy-template", {"x": "x"}).run.pk, timeout=60)
    assert run.status == "failed" and run.error is not None
    assert run.error["type"] == "template_error" and expected in run.error["message"]
    if output is not None:
        assert "the loop limit" in run.error["message"]
