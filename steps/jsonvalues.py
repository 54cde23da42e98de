"""What a JSON value from outside must satisfy before it is stored or walked.

Run input, event payloads and workflow documents arrive from the API, from
management commands and from YAML files. Each of those doors calls ``json_problems``
(through the service that owns it) so they all refuse the same values, with the
path of the bad field:

- text with a NUL character (``\\u0000``): PostgreSQL cannot store it in text or jsonb;
- text with a lone surrogate (``\\ud800``): not encodable as UTF-8, refused by jsonb;
- nesting deeper than ``MAX_DEPTH``: templates, JSON Schema and serialisation walk
  values recursively, and a 1,000-deep value would end in ``RecursionError``;
- integers outside signed 64 bits and non-finite floats (YAML's ``.inf``/``.nan``):
  no database column or JSON encoder takes them;
- anything that is not JSON at all (YAML dates, binary, non-string keys).

The walk is iterative (a hostile value cannot exhaust the stack) and stops after
``MAX_PROBLEMS`` findings or ``max_nodes`` visited values (YAML aliases can make a
small document expand into billions of nodes).
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 64
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_PROBLEMS = 20


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None."""
    if "\x00" in text:
        return "must not contain the NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"must not contain a lone surrogate (\\u{ord(text[exc.start]):04x}); it is not valid Unicode text"
    return None


def json_problems(value: Any, path: str = "", *, max_depth: int = MAX_DEPTH,
                  max_nodes: int | None = None) -> list[tuple[str, str]]:
    """Every reason ``value`` (at ``path``) cannot be stored as JSON, as (path, message) pairs.

    An empty list means the value is safe to store, hash, render and validate.
    ``path`` uses the definitions' notation: ``input.items[2].name``.
    """
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    visited = 0
    while stack and len(problems) < MAX_PROBLEMS:
        item, where, depth = stack.pop()
        visited += 1
        if max_nodes is not None and visited > max_nodes:
            problems.append((path, f"has more than {max_nodes} values (nested aliases?)"))
            break
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                problems.append((where, problem))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                problems.append((where, "integers must fit in 64 bits (between -2**63 and 2**63-1)"))
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append((where, f"must be a finite number, not {item}"))
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                problems.append((where, f"nests deeper than {max_depth} levels"))
                continue
            children: list[tuple[Any, str, int]] = []
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        problems.append((_join(where, str(key)),
                                         f"keys must be strings, got {type(key).__name__} {key!r}"))
                        continue
                    key_problem = text_problem(key)
                    if key_problem:
                        problems.append((where, f"a key {key_problem}"))
                        continue
                    children.append((child, _join(where, key), depth + 1))
            else:
                children = [(child, _join(where, i), depth + 1) for i, child in enumerate(item)]
            stack.extend(reversed(children))  # report in document order
        else:
            problems.append((where, f"must be JSON (a string, number, boolean, null, list or object), "
                                    f"not {type(item).__name__}"))
    return problems[:MAX_PROBLEMS]
