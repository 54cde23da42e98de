"""The ``fake`` provider kind: scripted answers, no network. For users' own tests and the offline demo.

It is not a model. ``options.script`` is a list of rules; the first rule whose
conditions hold answers::

    options:
      script:
        - when: "Research"        # substring of the system prompt + first user message
          round: 1                # the model turn within the step (optional)
          text: "Three facts..."  # or json: {...}, or tool_calls: [{name, arguments}], or error: {status, message}
          usage: {input_tokens: 120, output_tokens: 40}   # optional; default: word counts

With no matching rule the answer is ``(fake) `` plus the start of the last message.
Calls are recorded, priced and budgeted like any other provider's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .wire import ChatRequest, ChatResult, ProviderError

if TYPE_CHECKING:
    from .models import Provider


def _words(text: str) -> int:
    return len(text.split())


def _prompt_text(req: ChatRequest) -> str:
    first_user = next((m.get("content") or "" for m in req.messages if m["role"] == "user"), "")
    return f"{req.system or ''}\n{first_user}"


def answer(provider: Provider, req: ChatRequest, round_number: int) -> ChatResult:
    script = provider.options.get("script") or []
    if not isinstance(script, list):
        raise ProviderError("fake provider: options.script must be a list", permanent=True)
    prompt = _prompt_text(req)
    everything = prompt + "\n" + "\n".join(str(m.get("content") or "") for m in req.messages)
    rule: dict[str, Any] = {}
    for candidate in script:
        if not isinstance(candidate, dict):
            continue
        if "when" in candidate and str(candidate["when"]) not in prompt:
            continue
        if "round" in candidate and int(candidate["round"]) != round_number:
            continue
        rule = candidate
        break
    if "error" in rule:
        err = rule["error"] or {}
        status = int(err.get("status", 503))
        raise ProviderError(f"HTTP {status}: {err.get('message', 'scripted failure')}",
                            permanent=status < 500 and status not in (408, 409, 429), status=status)
    tool_calls = []
    for i, tc in enumerate(rule.get("tool_calls") or []):
        args = tc.get("arguments") or {}
        tool_calls.append({"id": tc.get("id") or f"fake_{round_number}_{i}", "name": tc["name"],
                           "arguments": args, "raw_arguments": json.dumps(args), "arguments_error": None})
    if "json" in rule:
        text = json.dumps(rule["json"])
    elif "text" in rule:
        text = str(rule["text"])
    elif tool_calls:
        text = ""
    else:
        last = str(req.messages[-1].get("content") or "") if req.messages else ""
        text = "(fake) " + last[:200]
    usage = rule.get("usage") or {}
    return ChatResult(
        text=text, tool_calls=tool_calls,
        input_tokens=int(usage.get("input_tokens", _words(everything))),
        output_tokens=int(usage.get("output_tokens", _words(text) + 10 * len(tool_calls))),
        stop_reason="tool_calls" if tool_calls else "stop", model=provider.model,
    )
