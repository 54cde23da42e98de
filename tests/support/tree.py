"""A copy of the source tree as a user or an image gets it: the files git tracks (as they are in
the working tree), nothing else (no .venv, var/, staticfiles/), made read-only; and servers
started from it on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx

from .procs import ROOT, Proc


def copy_tree(dest: Path) -> Path:
    """Copy the files git tracks (as they are in the working tree) to ``dest/stevora``."""
    tree = dest / "stevora"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the working tree, not yet in the index
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return tree


def make_read_only(tree: Path) -> Path:
    """No one may write below ``tree``; everyone may read it (and run what was executable)."""
    for path in [tree, *tree.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) | stat.S_IRGRP | stat.S_IROTH
                   | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0))
    return tree


def read_only_copy(dest: Path) -> Path:
    """The tracked files of the working tree in ``dest/stevora``, read-only."""
    return make_read_only(copy_tree(dest))


def make_writable(tree: Path) -> None:
    """Let pytest's tmp_path clean-up remove the copy."""
    for path in [tree, *tree.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Until ``url`` answers at all (any status); fails with the server's log if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            fetch(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer in {timeout}s:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (gunicorn's workers too), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, 15)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def start_gunicorn(env: dict[str, str], *, threads: int, timeout: int) -> tuple[str, Proc]:
    """gunicorn as deployed (one gthread worker) on a free port of 127.0.0.1, once the API
    answers (``/api/v1/runs/`` with its 401: never a route a test means to be the first to
    call). Returns its URL and the process (``proc.log()``; stop it with ``proc.kill()``)."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "stevora_project.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", "1", "--worker-class", "gthread", "--threads", str(threads), "--timeout", str(timeout),
            "--log-level", "warning"]
    proc = Proc(argv, env, "gunicorn")
    with open(proc.log_path, "ab") as log:
        proc.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v1/runs/", timeout=2).status_code == 401:
                return url, proc
        except httpx.TransportError:
            pass
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"gunicorn did not start:\n{proc.log()}")
        time.sleep(0.1)
