"""Storing workflow definitions: validated, immutable, versioned by content."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from runs.definitions import DefinitionError, handler_registered, parse_text, validate
from runs.models import Workflow, Workspace


@dataclass
class LoadResult:
    workflow: Workflow
    created: bool


def load_workflow(document: Any, *, workspace: Workspace | None = None, source: str | None = None) -> LoadResult:
    """Validate and store a definition. Same content: the existing version; changed: N+1."""
    spec = validate(document, source=source, handler_exists=handler_registered)
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
