"""Outbound HTTP (``http.request``, webhooks) connects to the address it checked, and only
to globally routable ones unless STEVORA_HTTP_ALLOW_PRIVATE says otherwise.

Network traffic stays on loopback: names are answered by a resolver injected through
``steps.outbound.resolver_override`` (the one place the module resolves), and the
servers are real HTTP(S) servers on 127.0.0.1 / 127.0.0.2.
"""

from __future__ import annotations

import http.server
import ipaddress
import logging
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import override_settings

from steps import outbound
from steps.builtin import http_request
from steps.handlers import PermanentError, StepContext


class _Recorder(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)  # type: ignore[attr-defined]
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: Any) -> None:
        return


class Server:
    def __init__(self, host: str, port: int, answer: bytes, tls: ssl.SSLContext | None = None) -> None:
        self.httpd = http.server.ThreadingHTTPServer((host, port), _Recorder)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.seen = []  # type: ignore[attr-defined]
        self.httpd.answer = answer  # type: ignore[attr-defined]
        self.httpd.redirect_to = ""  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def seen(self) -> list[tuple[str, str]]:
        return self.httpd.seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def two_servers() -> Iterator[tuple[Server, Server]]:
    """One server on 127.0.0.1 and another on 127.0.0.2, on the same port."""
    for _ in range(20):
        first = Server("127.0.0.1", 0, b"pinned")
        try:
            second = Server("127.0.0.2", first.port, b"rebound")
        except OSError:
            first.close()
            continue
        yield first, second
        first.close()
        second.close()
        return
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


class Rebinding:
    """A name that answers ``first`` once, then ``later`` (what a rebinding attacker's DNS does)."""

    def __init__(self, first: list[str], later: list[str]) -> None:
        self.first, self.later, self.calls = first, later, 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return self.first if self.calls == 1 else self.later


def allowing_private(allowed: bool = True) -> Any:
    return override_settings(STEVORA={**settings.STEVORA, "HTTP_ALLOW_PRIVATE": allowed})


def _ctx(config: Any) -> StepContext:
    return StepContext(run_id="r", step="fetch", key="fetch", attempt=1, idempotency_key="r:fetch:1",
                       step_idempotency_key="r:fetch", input={}, config=config,
                       log=logging.LoggerAdapter(logging.getLogger("test"), {}))


# --- pinning -------------------------------------------------------------------------


def test_the_connection_goes_to_the_address_that_was_checked_not_a_second_answer(
        two_servers: tuple[Server, Server]) -> None:
    pinned, rebound = two_servers
    resolver = Rebinding(["127.0.0.1"], ["127.0.0.2"])
    with allowing_private(), outbound.resolver_override(resolver):
        out = http_request(_ctx({"url": f"http://rebind.test:{pinned.port}/hello"}))
        assert out["status"] == 200 and out["body"] == "pinned"
        # The name answered once for this request; the connection went to that answer even
        # though every later lookup says 127.0.0.2.
        assert resolver.calls == 1 and rebound.seen == []
        assert pinned.seen == [("/hello", f"rebind.test:{pinned.port}")]  # Host header keeps the name
        # The next request resolves afresh and follows its own (checked) answer.
        out = http_request(_ctx({"url": f"http://rebind.test:{pinned.port}/again"}))
        assert out["body"] == "rebound" and resolver.calls == 2
    assert len(pinned.seen) == 1 and rebound.seen == [("/again", f"rebind.test:{pinned.port}")]


def test_one_request_resolves_once_and_never_dials_an_unchecked_address(two_servers: tuple[Server, Server]) -> None:
    pinned, rebound = two_servers
    resolver = Rebinding(["127.0.0.1"], ["127.0.0.2"])
    with outbound.resolver_override(resolver):
        response = outbound.request("GET", f"http://rebind.test:{pinned.port}/x", allow_private=True)
    assert response.text == "pinned" and resolver.calls == 1
    assert rebound.seen == []


def test_a_refused_first_answer_is_refused_even_if_the_connection_would_have_gone_elsewhere(
        two_servers: tuple[Server, Server]) -> None:
    pinned, rebound = two_servers
    resolver = Rebinding(["127.0.0.1"], ["127.0.0.2"])
    with allowing_private(False), outbound.resolver_override(resolver), \
            pytest.raises(PermanentError, match="127.0.0.1, a loopback address, not globally routable"):
        http_request(_ctx({"url": f"http://rebind.test:{pinned.port}/"}))
    assert resolver.calls == 1 and pinned.seen == [] and rebound.seen == []


def test_redirects_are_returned_not_followed(two_servers: tuple[Server, Server]) -> None:
    pinned, rebound = two_servers
    pinned.httpd.redirect_to = f"http://127.0.0.2:{rebound.port}/"  # type: ignore[attr-defined]
    with allowing_private():
        out = http_request(_ctx({"url": f"http://127.0.0.1:{pinned.port}/redirect"}))
    assert out["status"] == 302 and out["headers"]["location"] == f"http://127.0.0.2:{rebound.port}/"
    assert rebound.seen == []


def test_loopback_allowed_by_the_setting_works_end_to_end(two_servers: tuple[Server, Server]) -> None:
    pinned, _ = two_servers
    with allowing_private():
        out = http_request(_ctx({"url": f"http://127.0.0.1:{pinned.port}/direct"}))
    assert out == {"status": 200, "headers": out["headers"], "body": "pinned"}
    assert pinned.seen == [("/direct", f"127.0.0.1:{pinned.port}")]


def test_the_pinned_backend_refuses_an_origin_it_did_not_check() -> None:
    target = outbound.Target(url=httpx.URL("http://a.test/"), host="a.test", port=80, addresses=("127.0.0.1",))
    backend = outbound._PinnedBackend(target)
    import httpcore

    with pytest.raises(httpcore.ConnectError, match="only a.test:80 was checked"):
        backend.connect_tcp("b.test", 80)


# --- TLS: SNI and certificate verification use the name, not the pinned address ---------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA and a certificate for ``pinned.test`` it signed."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Stevora test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=d)
    _openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=pinned.test", cwd=d)
    (d / "leaf.ext").write_text("subjectAltName=DNS:pinned.test\nbasicConstraints=CA:FALSE\n"
                                "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext", cwd=d)
    return d


@pytest.fixture
def tls_server(certificates: Path) -> Iterator[tuple[Server, list[str | None]]]:
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    server = Server("127.0.0.1", 0, b"over tls", tls=context)
    yield server, server_names
    server.close()


def test_tls_to_a_pinned_address_sends_sni_and_verifies_the_certificate_for_the_name(
        certificates: Path, tls_server: tuple[Server, list[str | None]]) -> None:
    server, server_names = tls_server
    trust = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    with outbound.resolver_override(lambda host, port: ["127.0.0.1"]):
        response = outbound.request("GET", f"https://pinned.test:{server.port}/secure", allow_private=True,
                                    verify=trust)
    assert response.status_code == 200 and response.text == "over tls"
    assert server_names == ["pinned.test"]
    assert server.seen == [("/secure", f"pinned.test:{server.port}")]


def test_tls_to_a_pinned_address_refuses_a_certificate_for_another_name(
        certificates: Path, tls_server: tuple[Server, list[str | None]]) -> None:
    server, server_names = tls_server
    trust = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    with outbound.resolver_override(lambda host, port: ["127.0.0.1"]), \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        outbound.request("GET", f"https://impostor.test:{server.port}/", allow_private=True, verify=trust)
    assert server_names == ["impostor.test"] and server.seen == []


# --- which addresses are refused -------------------------------------------------------

NOT_GLOBAL = [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
    ("169.254.169.254", "link-local"), ("198.18.0.1", "private"), ("192.0.2.1", "private"),
    ("240.0.0.1", "private"), ("255.255.255.255", "private"),
    ("::1", "loopback"), ("fe80::1", "link-local"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("2001:db8::1", "private"), ("fec0::1", "site-local"), ("64:ff9b:1::1", "local-use NAT64"),
    ("::ffff:127.0.0.1", "loopback address (127.0.0.1) inside an IPv6"),
    ("::ffff:169.254.169.254", "link-local address (169.254.169.254) inside an IPv6"),
    ("::ffff:100.64.0.1", "carrier-grade NAT"),
    ("64:ff9b::a9fe:a9fe", "link-local address (169.254.169.254) inside an IPv6"),  # NAT64
    ("64:ff9b::7f00:1", "loopback address (127.0.0.1) inside an IPv6"),
    ("2002:7f00:1::1", "loopback address (127.0.0.1) inside an IPv6"),  # 6to4
    ("2002:a00:1::1", "private address (10.0.0.1) inside an IPv6"),
    ("::127.0.0.1", "IPv4-compatible"),
]


@pytest.mark.parametrize("address, why", NOT_GLOBAL)
def test_addresses_that_are_not_globally_routable_are_refused(address: str, why: str) -> None:
    assert why in (outbound.refusal(ipaddress.ip_address(address)) or "")
    with outbound.resolver_override(lambda host, port: [address]), \
            pytest.raises(outbound.RefusedAddress, match="not globally routable; set STEVORA_HTTP_ALLOW_PRIVATE"):
        outbound.resolve("http://looks-harmless.test/", allow_private=False)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::1"])
def test_globally_routable_addresses_pass_the_check(address: str) -> None:
    # Only checked, never connected to: this test makes no network traffic.
    assert outbound.refusal(ipaddress.ip_address(address)) is None
    with outbound.resolver_override(lambda host, port: [address]):
        assert outbound.resolve("https://public.test/", allow_private=False).addresses == (address,)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",
                                     "::ffff:0.0.0.0"])
def test_multicast_and_unspecified_addresses_are_refused_even_when_private_ones_are_allowed(address: str) -> None:
    with outbound.resolver_override(lambda host, port: [address]), \
            pytest.raises(outbound.RefusedAddress, match="which is never a server"):
        outbound.resolve("http://anything.test/", allow_private=True)


def test_a_name_with_one_public_and_one_private_answer_is_refused() -> None:
    with outbound.resolver_override(lambda host, port: ["8.8.8.8", "100.64.0.1"]), \
            pytest.raises(outbound.RefusedAddress, match="100.64.0.1, a carrier-grade NAT address"):
        outbound.resolve("http://mixed.test/", allow_private=False)


@pytest.mark.parametrize("url, why", [
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://[::ffff:127.0.0.1]:8080/", "loopback address (127.0.0.1) inside an IPv6"),
    ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "link-local"),
    ("http://[::1]/", "loopback"),
    ("http://0177.0.0.1/", "not a valid URL"),  # octal spelling: httpx refuses it before any lookup
    ("http://2130706433/", "loopback"),  # 127.0.0.1 as one decimal number
])
def test_address_literals_in_urls_are_refused_by_the_real_resolver(url: str, why: str) -> None:
    # getaddrinfo parses a numeric host without asking DNS: no traffic leaves the machine.
    with allowing_private(False), pytest.raises(PermanentError, match=re.escape(why)):
        http_request(_ctx({"url": url}))


@pytest.mark.parametrize("url", ["ftp://example.test/", "file:///etc/passwd", "http:///nohost", "gopher://x/"])
def test_urls_that_are_not_http_with_a_host_are_refused(url: str) -> None:
    with pytest.raises(PermanentError, match="http"):
        http_request(_ctx({"url": url}))


def test_an_unresolvable_name_is_a_retryable_error() -> None:
    from steps.handlers import RetryableError

    def nothing(host: str, port: int) -> list[str]:
        raise outbound.ResolveError(f"cannot resolve {host!r}: no such name")

    with outbound.resolver_override(nothing), pytest.raises(RetryableError, match="cannot resolve 'gone.test'"):
        http_request(_ctx({"url": "http://gone.test/"}))


# --- webhook delivery uses the same pinned path -----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_webhook_delivery_is_pinned_to_the_checked_address(two_servers: tuple[Server, Server]) -> None:
    from runs.models import Workspace
    from webhooks.delivery import deliver, new_delivery
    from webhooks.models import WebhookDelivery

    pinned, rebound = two_servers
    delivery = new_delivery(workspace_id=Workspace.default().pk, url=f"http://hooks.test:{pinned.port}/in",
                            event="run.completed", data={"ok": True})
    delivery.save(force_insert=True)
    resolver = Rebinding(["127.0.0.1"], ["127.0.0.2"])
    with allowing_private(), outbound.resolver_override(resolver):
        assert deliver(delivery.pk) == "succeeded"
    assert resolver.calls == 1 and rebound.seen == []
    assert pinned.seen == [("/in", f"hooks.test:{pinned.port}")]
    assert WebhookDelivery.objects.get(pk=delivery.pk).response_code == 200


@pytest.mark.django_db(transaction=True)
def test_webhook_delivery_to_carrier_grade_nat_fails_permanently() -> None:
    from runs.models import Workspace
    from webhooks.delivery import deliver, new_delivery
    from webhooks.models import WebhookDelivery

    delivery = new_delivery(workspace_id=Workspace.default().pk, url="http://100.64.0.1/hook",
                            event="run.completed", data={})
    delivery.save(force_insert=True)
    with allowing_private(False):
        assert deliver(delivery.pk) == "failed"
    row = WebhookDelivery.objects.get(pk=delivery.pk)
    assert row.attempts == 1 and "carrier-grade NAT" in row.error


def test_the_module_resolves_with_the_system_resolver_by_default() -> None:
    assert outbound._resolver is outbound.system_resolver
    assert outbound.system_resolver("127.0.0.1", 80) == ["127.0.0.1"]
