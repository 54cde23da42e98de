"""Storing workflow definitions: validated, immutable, versioned by content."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from runs.definitions import DefinitionError, handler_registered, parse_text, validate
from runs.engine import workers
from runs.models import Workflow, Workspace


class HandlerCheck:
    """Is a handler name known: registered in this process, or advertised by a live worker
    (the web process need not import the workers' handler modules). With ``warn``, it also
    remembers the names only live workers have, and the names this process has but no live
    worker does (runs would wait for a worker with them); without, it asks the registry
    only about names this process lacks."""

    def __init__(self, *, warn: bool = False) -> None:
        self.warn = warn
        self.elsewhere: list[str] = []
        self.not_on_workers: list[str] = []
        self._live: list[set[str]] | None = None

    def _workers(self) -> list[set[str]]:
        if self._live is None:
            self._live = [set(w.handlers or []) for w in workers.live_workers()]
        return self._live

    def __call__(self, name: str) -> bool:
        if handler_registered(name):
            if self.warn:
                live = self._workers()
                if live and not any(name in handlers for handlers in live) and name not in self.not_on_workers:
                    self.not_on_workers.append(name)
            return True
        if any(name in handlers for handlers in self._workers()):
            if self.warn and name not in self.elsewhere:
                self.elsewhere.append(name)
            return True
        return False


@dataclass
class LoadResult:
    workflow: Workflow
    created: bool


def load_workflow(document: Any, *, workspace: Workspace | None = None, source: str | None = None) -> LoadResult:
    """Validate and store a definition. Same content: the existing version; changed: N+1."""
    spec = validate(document, source=source, handler_exists=HandlerCheck())
    workspace = workspace or Workspace.default()
    digest = spec.content_hash
    for _ in range(3):
        existing = Workflow.objects.filter(workspace=workspace, name=spec.name, content_hash=digest).first()
        if existing is not None:
            return LoadResult(existing, False)
        latest = Workflow.objects.filter(workspace=workspace, name=spec.name).aggregate(v=Max("version"))["v"] or 0
        try:
            with transaction.atomic():
                workflow = Workflow.objects.create(
                    workspace=workspace, name=spec.name, version=latest + 1, description=spec.description,
                    definition=document, content_hash=digest,
                )
            return LoadResult(workflow, True)
        except IntegrityError:
            continue  # a concurrent load took this version number or stored the same content
    raise DefinitionError([("name", f"could not store {spec.name!r}: concurrent loads kept colliding")], source)


def load_workflow_text(text: str, *, source: str | None = None, workspace: Workspace | None = None) -> LoadResult:
    return load_workflow(parse_text(text, source), workspace=workspace, source=source)


def definition_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml", ".json"}))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{raw}: no such file or directory")
    return files
