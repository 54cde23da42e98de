"""The README's path gives a styled admin: from a fresh (read-only) copy of the tree, with
DEBUG off and no collectstatic, the real ``manage.py runserver`` and gunicorn serve the
stylesheet the login page links to (WhiteNoise finds the apps' static files)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tree import fetch, free_port, make_writable, read_only_copy, stop, wait_for_http

# The same in every backend: runs in the embedded pass only (bin/test).
pytestmark = pytest.mark.backend_independent


@pytest.fixture
def fresh_tree(tmp_path: Path) -> Iterator[Path]:
    tree = read_only_copy(tmp_path)
    assert not (tree / "staticfiles").exists()
    yield tree
    make_writable(tree)


def server_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DEBUG", "DJANGO_SETTINGS_MODULE", "PYTHONPATH",
                        "STEVORA_STATIC_FINDERS", "STEVORA_STATIC_ROOT"}}
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    env.update(STEVORA_VAR_DIR=str(var), PYTHONDONTWRITEBYTECODE="1")
    return env


def assert_admin_styles_served(base: str) -> None:
    status, _, body = fetch(f"{base}/admin/login/")
    assert status == 200, body[:500]
    sheets = re.findall(rb'<link rel="stylesheet" href="([^"]+\.css)"', body)
    assert sheets, body[:1000]
    for href in sheets:
        status, content_type, css = fetch(base + href.decode())
        assert (status, content_type.split(";")[0]) == (200, "text/css"), (href, status, content_type)
        assert len(css) > 100


@pytest.mark.parametrize("server", ["runserver", "gunicorn"])
def test_the_admin_login_page_and_its_stylesheets_are_served_from_a_fresh_read_only_tree(
        fresh_tree: Path, tmp_path: Path, server: str) -> None:
    port = free_port()
    if server == "runserver":
        argv = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    else:
        argv = [sys.executable, "-m", "gunicorn", "stevora_project.wsgi", "--bind", f"127.0.0.1:{port}",
                "--workers", "1"]
    log = tmp_path / f"{server}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=fresh_tree, env=server_env(tmp_path), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/admin/login/", proc, log)
        assert_admin_styles_served(f"http://127.0.0.1:{port}")
    finally:
        stop(proc)
