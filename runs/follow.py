"""``--follow`` for ``start_run --wait`` and ``show_run``: a run's history as it is written
(one line each, on stderr) and its streamed LLM text as it comes (on stdout).

The text is read from the live channel (``steps.live``), the history from RunEvent rows.
Text of an HTTP attempt that failed half-way is marked as discarded; the recorded answer
is whatever the step's output says, not what went by here.
"""

from __future__ import annotations

from typing import Any

from steps import live

from .models import RunEvent


class Follower:
    def __init__(self, run_id: Any, out: Any, err: Any) -> None:
        self.run_id = run_id
        self.out, self.err = out, err
        self.history_id = 0
        self.cursor = ""
        self.current: tuple[Any, ...] | None = None
        self.mid_line = False
        # stdout and stderr on one terminal: keep their lines apart. Otherwise stdout is the text alone.
        self.same_screen = all(getattr(s, "isatty", lambda: False)() for s in (out, err))

    def _end_text(self) -> None:
        if self.mid_line:
            self.out.write("")
            self.mid_line = False

    def pump(self) -> None:
        """Write everything new since the last call."""
        for event in RunEvent.objects.filter(run_id=self.run_id, id__gt=self.history_id).order_by("id")[:500]:
            self.history_id = event.pk
            if self.same_screen:
                self._end_text()  # one terminal: the history line starts a line of its own
            where = f" {event.step_key}" if event.step_key else ""
            message = f": {event.message}" if event.message else ""
            self.err.write(f"· {event.kind}{where}{message}")
        while True:
            deltas = live.read(self.run_id, self.cursor, limit=500)
            for delta in deltas:
                self.cursor = delta["cursor"]
                self.write_delta(delta)
            if len(deltas) < 500:
                break
        if hasattr(self.out, "flush"):
            self.out.flush()

    def write_delta(self, delta: dict[str, Any]) -> None:
        if delta.get("kind") == "discard":
            self._end_text()
            self.err.write(f"· (the text above from {delta.get('provider')} was discarded: that attempt failed)")
            self.current = None
            return
        key = (delta.get("step"), delta.get("attempt"), delta.get("round"), delta.get("call"))
        if key != self.current:
            self._end_text()
            self.err.write(f"── {delta.get('step')} · round {delta.get('round')} · {delta.get('provider')} ──")
            self.current = key
        self.out.write(str(delta.get("text") or ""), ending="")
        self.mid_line = True

    def close(self) -> None:
        self.pump()
        self._end_text()
