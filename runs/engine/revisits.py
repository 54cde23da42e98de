"""Which steps of a workflow can be visited more than once in a run (a loop).

``engine.activate`` numbers visits (``draft``, ``draft#2``) by counting the step's
rows; a step that can never be visited again is always visit 1, so the hot path
skips that query. Jumps stay inside their sequence (``definitions`` refuses others)
and ``following`` only moves forward, so a step can come round again only if some
jump goes backwards across it: from index ``s`` to ``t <= s`` with ``t <= i <= s``.

The analysis is conservative: every string anywhere in a step's dict that names a
step of the same sequence counts as a possible jump (``next``, ``then``, ``else``,
``on_failure``, and whatever a newer step type adds); a step of a type the engine
does not know may pick its successor at run time, so everything up to it counts as
revisitable; and a step inside a revisitable ``parallel``/``map`` is revisitable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runs.definitions import StepSpec, WorkflowSpec

# Types whose successor is one of the names in their definition (or the next step).
_STATIC_TYPES = frozenset({"task", "condition", "parallel", "map", "workflow", "wait"})

# id(spec) -> (spec, names); the spec is kept so that an id is never reused for another.
_cache: dict[int, tuple[WorkflowSpec, frozenset[str]]] = {}


def revisitable(wf: WorkflowSpec) -> frozenset[str]:
    """Names of the steps of ``wf`` that a run may visit more than once."""
    hit = _cache.get(id(wf))
    if hit is not None and hit[0] is wf:
        return hit[1]
    names = frozenset(_analyse(wf))
    if len(_cache) > 1024:
        _cache.clear()
    _cache[id(wf)] = (wf, names)
    return names


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _analyse(wf: WorkflowSpec) -> set[str]:
    names: set[str] = set()
    for sequence in wf.sequences.values():
        position = {spec.name: spec.index for spec in sequence}
        for source in sequence:
            jumps = _strings({k: v for k, v in source.raw.items() if k != "name"})
            back_to = [position[s] for s in jumps if s in position and position[s] <= source.index]
            if source.type not in _STATIC_TYPES:
                back_to.append(0)
            if back_to:
                names.update(spec.name for spec in sequence[min(back_to): source.index + 1])
    # Everything inside a parallel or map that may run again runs again too.
    specs: list[StepSpec] = [spec for sequence in wf.sequences.values() for spec in sequence]
    changed = True
    while changed:
        changed = False
        for spec in specs:
            if spec.name not in names and spec.parent is not None and spec.parent in names:
                names.add(spec.name)
                changed = True
    return names
