"""A network namespace joined to this machine by a veth pair, for partition tests.

``Partition.create()`` makes a namespace of its own (``ip netns add``), a veth pair with
one end inside it and addresses from a private /30 that exists only between the two
ends (nothing else on the machine routes there, and no traffic leaves the machine).
A process started with ``Partition.wrap(argv)`` lives inside; ``cut()`` takes the host
end of the link down (packets vanish, as in a real partition: no reset, no error) and
``heal()`` brings it back. ``delete()`` removes everything and is safe to call twice.

The machine's PostgreSQL and Redis listen on 127.0.0.1 only, which a namespace cannot
reach (its loopback is its own). ``Forwarder`` listens on the host end's address and
relays bytes to them unchanged, so the namespace's worker talks to the same database and
broker as everyone else, through the veth link.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
from typing import Any


class Unavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, or the kernel refused)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


class Partition:
    def __init__(self, name: str, host_if: str, ns_if: str, host_ip: str, ns_ip: str) -> None:
        self.name = name
        self.host_if = host_if
        self.ns_if = ns_if
        self.host_ip = host_ip
        self.ns_ip = ns_ip
        self.deleted = False

    @classmethod
    def create(cls) -> Partition:
        if shutil.which("ip") is None:
            raise Unavailable("the `ip` command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root (CAP_NET_ADMIN); running as uid "
                              f"{os.geteuid()}")
        tag = f"{os.getpid() % 100000:05d}"
        used = _ip("-4", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
        rng = random.Random()
        while True:  # a /30 inside 10.213.0.0/16 that nothing on this machine uses yet
            third, fourth = rng.randrange(256), rng.randrange(0, 256, 4)
            net = f"10.213.{third}."
            if f"{net}{fourth}/30" not in used and f"{net}{fourth + 1}" not in used:
                break
        part = cls(f"stevora-part-{tag}", f"stvp{tag}h", f"stvp{tag}n", f"{net}{fourth + 1}", f"{net}{fourth + 2}")
        _ip("netns", "add", part.name)
        try:
            _ip("link", "add", part.host_if, "type", "veth", "peer", "name", part.ns_if)
            _ip("link", "set", part.ns_if, "netns", part.name)
            _ip("addr", "add", f"{part.host_ip}/30", "dev", part.host_if)
            _ip("link", "set", part.host_if, "up")
            _ip("-n", part.name, "addr", "add", f"{part.ns_ip}/30", "dev", part.ns_if)
            _ip("-n", part.name, "link", "set", part.ns_if, "up")
            _ip("-n", part.name, "link", "set", "lo", "up")
        except Unavailable:
            part.delete()
            raise
        return part

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def pids(self) -> list[int]:
        done = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in done.stdout.split() if p.isdigit()]

    def delete(self) -> None:
        if self.deleted:
            return
        self.deleted = True
        for pid in self.pids():  # only processes this test started live in its namespace
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _ip("link", "del", self.host_if, check=False)  # takes its peer inside with it
        _ip("netns", "del", self.name, check=False)


class Forwarder:
    """Relay TCP connections accepted on ``listen_host`` (an ephemeral port) to ``target``."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((listen_host, 0))
        self.server.listen(64)
        self.host, self.port = listen_host, self.server.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"forward-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.server.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.close()
                except OSError:
                    pass
            self._open.clear()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
