"""compose.yaml's services start as they would in their containers, without Docker (no daemon
here): the image's start-up commands, read from compose.yaml with its variables filled in the
way compose fills them, run as an unprivileged user (nobody) from a read-only copy of the tree
whose static files were collected as root (the Dockerfile's build step), against this
machine's PostgreSQL and Redis. The bootstrap creates the superuser and loads the examples,
every service's healthcheck passes, /healthz checks the database, the admin is styled and a
run completes on the worker."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.contrib.auth.models import User

from runs.models import Run
from tests.support.tree import copy_tree, fetch, free_port, make_read_only, make_writable, stop, wait_for_http
from tests.support.workers import subprocess_env, wait_until

pytestmark = pytest.mark.skipif(settings.IS_EMBEDDED_BROKER,
                                reason="compose runs on PostgreSQL and Redis (the PostgreSQL pass covers it)")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
HOST_ENV = {"SECRET_KEY": "compose-test-" + uuid.uuid4().hex, "STEVORA_ADMIN_USERNAME": "admin",
            "STEVORA_ADMIN_PASSWORD": "compose-test-password"}


def interpolate(value: str, env: dict[str, str]) -> str:
    """compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        have = env.get(name)
        if op == ":?" and not have:
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        if op == ":-" and not have:
            return arg
        if op == "-" and have is None:
            return arg
        return have or ""
    value = re.sub(r"\$\{(\w+)(:-|-|:\?)?([^}]*)\}", one, value.replace("$$", "\0"))
    return value.replace("\0", "$")


def service(compose: dict[str, Any], name: str, host_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    spec = compose["services"][name]
    env = {k: interpolate(str(v), host_env) for k, v in (spec.get("environment") or {}).items()}
    return [interpolate(part, host_env) for part in spec["command"]], env


def healthcheck(compose: dict[str, Any], name: str) -> list[str]:
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return list(test[1:])


def image_python(dest: Path) -> Path:
    """This session's interpreter, copied where nobody may run it (it lives under /root, which
    nobody may not enter), with this session's requirements on its path: the image's Python."""
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(Path(sys.executable).resolve(), dest / "bin" / "python")
    (dest / "lib").mkdir()
    for lib in prefix.glob("lib/libpython*.so*"):
        shutil.copy2(lib, dest / "lib" / lib.name)
    shutil.copytree(prefix / "lib" / version, dest / "lib" / version, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "test", "config-*", "idlelib", "tkinter",
                                                  "ensurepip"))
    site = dest / "lib" / version / "site-packages"
    site.mkdir()
    (site / "image-requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return dest


@pytest.fixture
def image(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """What the Dockerfile builds: the source, its static files collected as root, then read-only;
    a Python with the requirements; a writable var directory for the unprivileged user."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to run the services as nobody")
    base = Path(tempfile.mkdtemp(prefix="stevora-image-"))
    base.chmod(0o755)
    tree = copy_tree(base)
    build = {**subprocess_env(), "SECRET_KEY": "collectstatic-at-build-time", "PYTHONDONTWRITEBYTECODE": "1"}
    build.pop("STEVORA_STATIC_ROOT", None)
    dockerfile = (tree / "Dockerfile").read_text()
    assert "python manage.py collectstatic --noinput" in dockerfile
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=tree, env=build,
                   check=True)
    make_read_only(tree)
    py = image_python(base / "python")
    for script, entry in (("gunicorn", "from gunicorn.app.wsgiapp import run as main"),
                          ("celery", "from celery.__main__ import main")):
        path = py / "bin" / script
        path.write_text(f"#!{py / 'bin' / 'python'}\nimport sys\n{entry}\nsys.exit(main())\n")
        path.chmod(0o755)
    var = base / "var"
    var.mkdir()
    os.chown(var, 65534, 65534)
    yield {"tree": tree, "python": py, "var": var, "lib": py / "lib"}
    make_writable(tree)
    shutil.rmtree(base, ignore_errors=True)


def signs_in(base: str, username: str, password: str) -> bool:
    """Sign in through the admin's login form; True when the admin index greets the user."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{base}/admin/login/", timeout=10) as page:
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.read())
    assert token
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token.group(1).decode(), "username": username,
                                   "password": password, "next": "/admin/"}).encode()
    request = urllib.request.Request(f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"})
    with opener.open(request, timeout=10) as answer:
        return answer.url.endswith("/admin/") and b"Site administration" in answer.read()


def test_the_compose_services_come_up_healthy_as_nobody_from_a_read_only_tree(
        image: dict[str, Path], fresh_engine: Any, tmp_path: Path) -> None:
    tree, var = image["tree"], image["var"]
    compose = yaml.safe_load((tree / "compose.yaml").read_text())
    example = dict(line.split("=", 1) for line in (tree / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    assert example["SECRET_KEY"] == "" and "STEVORA_ADMIN_USERNAME" in example
    with pytest.raises(AssertionError, match="SECRET_KEY"):
        service(compose, "web", {})  # no fixed default: compose refuses to start without one
    dockerignore = (tree / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(dockerignore)

    port = free_port()
    here = subprocess_env()
    # The containers' network names (postgres, redis) are this machine's test database and broker;
    # a queue of its own keeps other workers away from this test's messages.
    local = {"DATABASE_URL": here["DATABASE_URL"], "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
             "STEVORA_QUEUE": f"compose-test-{uuid.uuid4().hex[:8]}", "STEVORA_VAR_DIR": str(var),
             "PATH": f"{image['python'] / 'bin'}:/usr/bin:/bin", "HOME": str(var), "PORT": str(port),
             "LD_LIBRARY_PATH": str(image["lib"]), "PYTHONDONTWRITEBYTECODE": "1",
             "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 1"}

    def run_env(name: str) -> tuple[list[str], dict[str, str]]:
        command, env = service(compose, name, HOST_ENV)
        return command, {**env, **local}

    command, env = run_env("bootstrap")
    done = subprocess.run(NOBODY + command, cwd=tree, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bootstrap: done" in done.stdout
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.has_usable_password()  # the password: signing in below
    again = subprocess.run(NOBODY + command, cwd=tree, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0 and "exists already" in again.stdout, again.stdout + again.stderr

    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("web", "worker", "beat")}
    try:
        for name in ("web", "worker", "beat"):
            command, env = run_env(name)
            with logs[name].open("wb") as out:
                procs[name] = subprocess.Popen(NOBODY + command, cwd=tree, env=env, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_http(f"http://127.0.0.1:{port}/healthz", procs["web"], logs["web"])
        for name in ("web", "worker", "beat"):
            _, env = run_env(name)

            def healthy(name: str = name, env: dict[str, str] = env) -> bool:
                for proc_name, proc in procs.items():
                    assert proc.poll() is None, f"{proc_name} exited:\n{logs[proc_name].read_text()[-3000:]}"
                return subprocess.run(NOBODY + healthcheck(compose, name), cwd=tree, env=env,
                                      capture_output=True, timeout=30).returncode == 0

            wait_until(healthy, timeout=90, interval=1, message=f"{name}'s healthcheck")

        status, _, body = fetch(f"http://127.0.0.1:{port}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "database": "postgresql"})
        status, _, page = fetch(f"http://127.0.0.1:{port}/admin/login/")
        assert status == 200
        sheet = re.search(rb'<link rel="stylesheet" href="([^"]+base[^"]*\.css)"', page)
        assert sheet, page[:800]
        status, content_type, _ = fetch(f"http://127.0.0.1:{port}{sheet.group(1).decode()}")
        assert (status, content_type.split(";")[0]) == (200, "text/css")

        assert signs_in(f"http://127.0.0.1:{port}", "admin", HOST_ENV["STEVORA_ADMIN_PASSWORD"])

        # A run started from the web container's shell completes on the worker.
        _, env = run_env("web")
        started = subprocess.run(NOBODY + ["python", "manage.py", "start_run", "demo-pipeline", "--input",
                                           '{"topic": "compose"}', "--wait", "--timeout", "90"],
                                 cwd=tree, env=env, capture_output=True, text=True, timeout=150)
        assert started.returncode == 0, started.stdout + started.stderr + logs["worker"].read_text()[-3000:]
        run = Run.objects.get(pk=started.stdout.strip().splitlines()[-1])
        assert run.status == "completed" and (run.output or {}).get("published") is True
    finally:
        for proc in procs.values():
            stop(proc)
