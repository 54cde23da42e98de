"""Outbound HTTP to addresses that were checked, resolved once and pinned.

Used by the ``http.request`` handler and by webhook delivery: a URL written by a
workflow author or an API client must not reach the machine's own services, its
private network or a cloud metadata endpoint (server-side request forgery).

Checking the resolved address and then letting httpx resolve the name again is not
enough: a name can answer with a public address to the check and with ``127.0.0.1``
to the connection (DNS rebinding). So the name is resolved exactly once, here; every
answer is checked; and the connection goes to exactly those checked addresses, through
an httpcore network backend that refuses to dial anything else. The URL itself is not
rewritten, so the ``Host`` header, TLS SNI and certificate verification all still use
the hostname.

Refused unless ``STEVORA_HTTP_ALLOW_PRIVATE=true``: every address that is not globally
routable — loopback, private (RFC 1918, ULA), link-local, carrier-grade NAT
(100.64.0.0/10), benchmarking, documentation, reserved, and IPv6 forms that embed such
an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``). Multicast and unspecified addresses (``0.0.0.0``, ``::``) are refused
always: neither is a server. Redirects are never followed: a 3xx is returned as it is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses the name resolves to (strings, as getaddrinfo gives them)
Resolver = Callable[[str, int], list[str]]

_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a private NAT64 prefix
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")  # deprecated, but still not routable


class RefusedAddress(ValueError):
    """The URL is not http(s) with a host, or its host resolves to an address that is refused (permanent)."""


class ResolveError(OSError):
    """The host name could not be resolved (transient: DNS may answer later)."""


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (``getaddrinfo``), answers in its order, without duplicates."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolveError(f"cannot resolve {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_resolver_lock = threading.Lock()
_resolver: Resolver = system_resolver


@contextlib.contextmanager
def resolver_override(resolver: Resolver) -> Iterator[None]:
    """Use ``resolver`` instead of the system's (tests: a name that answers differently each time)."""
    global _resolver
    with _resolver_lock:
        previous, _resolver = _resolver, resolver
    try:
        yield
    finally:
        with _resolver_lock:
            _resolver = previous


def refusal(address: Address) -> str | None:
    """Why ``address`` is not a globally routable unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped
        if embedded is None and address in _NAT64_WELL_KNOWN:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None:
            embedded = address.sixtofour
        if embedded is not None:
            inner = refusal(embedded)
            return f"{inner} ({embedded}) inside an IPv6 address" if inner else None
        if address in _NAT64_LOCAL_USE:
            return "a local-use NAT64 address"
        if address in _SITE_LOCAL:
            return "a site-local address"
        if address in _IPV4_COMPATIBLE and not (address.is_loopback or address.is_unspecified):
            return "an IPv4-compatible IPv6 address (deprecated)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def _always_refused(address: Address) -> bool:
    """Not a server anywhere, whatever the setting says."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_multicast or address.is_unspecified


@dataclass(frozen=True)
class Target:
    """A URL's host and port with the addresses it resolved to, each one checked."""

    url: httpx.URL
    host: str  # ASCII (IDNA) form, as httpcore passes it to the network backend
    port: int
    addresses: tuple[str, ...]


def resolve(url: str | httpx.URL, *, allow_private: bool | None = None) -> Target:
    """Parse ``url`` (as httpx will), resolve its host once and check every answer.

    Raises RefusedAddress (permanent) or ResolveError (transient). ``allow_private``
    defaults to ``STEVORA_HTTP_ALLOW_PRIVATE``.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise RefusedAddress(f"url is not a valid URL: {exc}") from None
    if parsed.scheme not in {"http", "https"} or not parsed.raw_host:
        raise RefusedAddress(f"url must be an http(s) URL with a host, got {str(url)!r}")
    if allow_private is None:
        allow_private = bool(settings.STEVORA["HTTP_ALLOW_PRIVATE"])
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    answers = _resolver(host, port)
    if not answers:
        raise ResolveError(f"cannot resolve {host!r}: no addresses")
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer.split("%", 1)[0])  # drop an IPv6 zone id
        except ValueError:
            raise ResolveError(f"cannot resolve {host!r}: {answer!r} is not an address") from None
        if _always_refused(address):
            raise RefusedAddress(f"{host} resolves to {address}, {refusal(address)}, which is never a server")
        why = refusal(address)
        if why is not None and not allow_private:
            raise RefusedAddress(f"{host} resolves to {address}, {why}, not globally routable; "
                                 "set STEVORA_HTTP_ALLOW_PRIVATE=true to allow private and loopback addresses")
    return Target(url=parsed, host=host, port=port, addresses=tuple(answers))


class _PinnedBackend(httpcore.SyncBackend):
    """Dials only the target's checked addresses (in order), for the target's host and port only."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        if host.lower() != self.target.host.lower() or port != self.target.port:
            # Only a redirect or a proxy could ask for another origin, and neither is used.
            raise httpcore.ConnectError(f"refusing to connect to {host}:{port}: only {self.target.host}:"
                                        f"{self.target.port} was checked")
        last: Exception | None = None
        for address in self.target.addresses:
            try:
                return super().connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                           socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # resolve() never returns a target without addresses
        raise last


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport whose connections go to ``target``'s checked addresses only.

    httpx takes no network backend, so the pool it builds is replaced by one with ours;
    everything else (request conversion, exception mapping) is httpx's own.
    """

    def __init__(self, target: Target, *, verify: ssl.SSLContext | bool = True) -> None:
        ssl_context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(
            verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, retries=0)
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=_PinnedBackend(target),
                                             max_connections=1, retries=0)


def request(method: str, url: str, *, headers: Mapping[str, str] | None = None, params: Any = None,
            json: Any = None, content: Any = None, timeout: float = 30.0, allow_private: bool | None = None,
            verify: ssl.SSLContext | bool = True) -> httpx.Response:
    """Send one request to ``url``'s checked, pinned addresses; redirects are not followed.

    Raises RefusedAddress, ResolveError, or httpx.HTTPError (network failures).
    """
    target = resolve(url, allow_private=allow_private)
    # trust_env=False: no proxy from the environment (it would dial an unchecked address),
    # no .netrc credentials sent to whoever the URL names.
    with httpx.Client(transport=PinnedTransport(target, verify=verify), trust_env=False, follow_redirects=False,
                      timeout=timeout) as client:
        return client.request(method, target.url, headers=headers, params=params, json=json, content=content)


__all__ = ["RefusedAddress", "ResolveError", "Resolver", "Target", "PinnedTransport", "refusal", "request",
           "resolve", "resolver_override", "system_resolver"]
