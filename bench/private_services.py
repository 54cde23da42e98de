"""Private PostgreSQL and Redis instances that a script creates, restarts and removes itself.

Django-free: a driver uses it before settings exist. Each instance lives under one
directory of its own and listens on 127.0.0.1 on a port found free, never touching
the machine's own PostgreSQL or Redis. ``PrivatePostgres.restart_immediate`` is a
crash as far as clients are concerned (``pg_ctl restart -m immediate``: every
session cut, WAL replayed on start); ``PrivateRedis.restart_empty`` kills Redis and
starts a new, empty one on the same port (no persistence: every message is lost).

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres``
user and its commands run through ``runuser``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PDEATHSIG = 1  # prctl(PR_SET_PDEATHSIG): the child gets a signal when this process dies


class ServiceError(RuntimeError):
    """A private instance could not be created, started or stopped."""


def free_port(start: int, tries: int = 400) -> int:
    """The first port from ``start`` on that nothing listens on (and that we can bind)."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise ServiceError(f"no free port in {start}..{start + tries - 1}")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the driver is killed, its services go too.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: str | Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a process group of its own (so SIGKILL can take the whole group),
    its output appended to ``log_path``; it dies with this process."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True, preexec_fn=_die_with_parent)


def kill_group(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGKILL ``proc``'s whole process group and reap it."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


class PrivatePostgres:
    """A throw-away PostgreSQL cluster: ``initdb`` into ``root/pgdata``, trust auth,
    listening on 127.0.0.1:``port`` only, its socket in its own directory."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "pgdata"
        self.log = root / "postgresql.log"
        self.bindir = self._find_bindir()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self.started = False

    @staticmethod
    def _find_bindir() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        if found:
            return Path(found[-1]).parent
        initdb = shutil.which("initdb")
        if initdb:
            return Path(initdb).parent
        raise ServiceError("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb "
                           "and no initdb on PATH): install the postgresql package")

    def _run(self, *argv: str, timeout: float = 120.0) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise ServiceError(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}\n{_tail(self.log)}")

    def create(self) -> PrivatePostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # the postgres user must reach its data dir and log
        self.data.mkdir(mode=0o700)
        self.log.touch()
        if self.as_user:
            try:
                user = pwd.getpwnam(self.as_user)
            except KeyError:
                raise ServiceError("running as root but there is no 'postgres' user to own the "
                                   "private cluster (PostgreSQL refuses to run as root)") from None
            for path in (self.data, self.log):
                os.chown(path, user.pw_uid, user.pw_gid)
            reach = subprocess.run(["runuser", "-u", self.as_user, "--", "test", "-w", str(self.data)],
                                   capture_output=True, timeout=30)
            if reach.returncode != 0:
                raise ServiceError(f"the {self.as_user} user cannot reach {self.data}: a directory above it "
                                   "is private (mode 0700?); choose another place (--work-root)")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        return self

    def start(self) -> PrivatePostgres:
        # fsync off: the machine does not crash here, only PostgreSQL (an immediate stop
        # keeps the WAL that the kernel already has); synchronous commits stay on, so a
        # commit a client saw is never lost by the restart.
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=100 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.started = True
        return self

    def restart_immediate(self) -> None:
        """Cut every session at once and start again (crash recovery on start)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "immediate", "-w", "-t", "60",
                  "restart")

    def stop(self) -> None:
        if self.started and (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)
            except (ServiceError, subprocess.TimeoutExpired):
                self._kill_postmaster()
        self.started = False

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)


class PrivateRedis:
    """A Redis server on 127.0.0.1:``port`` that keeps nothing on disk."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.log = root / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server not found on PATH: install the redis-server package")
        self.binary = binary

    def start(self, timeout: float = 20.0) -> PrivateRedis:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = spawn([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"], self.log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServiceError(f"redis-server exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"redis-server not answering after {timeout}s:\n{_tail(self.log)}")
            time.sleep(0.05)

    def restart_empty(self) -> None:
        """SIGKILL Redis and start a fresh, empty one on the same port: every queued and
        reserved message is gone."""
        kill_group(self.proc)
        self.start()

    def stop(self) -> None:
        kill_group(self.proc)
        self.proc = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"
