# intent_ref: platform.modules
"""SSRF guard (OWASP API7): outbound HTTP only to public addresses (or, in local development, allow-listed hosts)."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from shared.config import get_settings
from shared.modules.contract import StepFailed

MAX_REDIRECTS = 5
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
"""Cloud instance-metadata endpoints: they hand out the platform's credentials, so no allow-list opens them."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

PRIVATE_NAME_SUFFIXES = ("localhost", ".localhost", ".internal", ".local", ".home.arpa")
"""Names that by convention resolve only inside a host or a private network (RFC 6761, RFC 6762, RFC 8375)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


class UrlRefused(StepFailed):
    """The URL may not be called from this tenant's steps."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address (A and AAAA) the host resolves to, in resolver order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal_reason(address: IPAddress) -> str | None:
    """Why a step may not connect to `address`, or None for a public address."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 form that embeds an IPv4 address reaches that IPv4 address: judge the embedded one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal_reason(embedded)
    for attribute, label in (
        ("is_loopback", "loopback"),
        ("is_unspecified", "unspecified"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(address, attribute):
            return label
    # Shared address space (100.64.0.0/10) and other special-purpose blocks are neither private nor global.
    return None if address.is_global else "non-public"


def private_network_allowed(override: bool | None = None) -> bool:
    """Whether tenants may reach loopback and private hosts: `override` when given (tests inject it), otherwise
    this deployment's setting (on for local development only), read at each call."""
    return get_settings().QP_ALLOW_PRIVATE_NETWORK_HOSTS if override is None else override


def _ip_literal(host: str) -> IPAddress | None:
    """The address a host written as an IP literal denotes, legacy IPv4 forms (`2130706433`, `127.1`) included."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if ":" in text or not text:
        return None
    try:
        # The resolver accepts these shorthand forms too, so they denote the same address.
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def allow_list_refusal(entry: str, *, allow_private: bool) -> str | None:
    """Why `entry` may not be on a tenant's allowed_hosts, or None.

    Metadata addresses are never allowed; other non-public literals and private-only names only when this
    deployment allows private networks. A public name that resolves privately is left to `check_url`.
    """
    host = entry.strip().lower().rstrip(".")
    if not host:
        return "an empty host name"
    address = _ip_literal(host)
    if address is not None:
        reason = refusal_reason(address)
        if reason == "cloud metadata" or (reason is not None and not allow_private):
            return f"{entry!r} is not a public address ({reason})"
        return None
    if not allow_private and (host == "localhost" or host.endswith(PRIVATE_NAME_SUFFIXES)):
        return f"{entry!r} names a host of a private network"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses it may be connected to."""

    url: httpx.URL
    host: str
    addresses: tuple[str, ...]


def check_url(
    url: str | httpx.URL,
    allowed_hosts: Collection[str] = (),
    resolver: Resolver = system_resolver,
    *,
    allow_private: bool = False,
) -> Target:
    """Resolve the URL's host and refuse it unless every address is public, or (only with `allow_private`) the
    host is allow-listed.

    Metadata addresses are refused even for an allow-listed host. Without `allow_private` the allow-list opens
    nothing: an entry written before that rule, or a public name that resolves privately, reaches no private
    address. The addresses are returned so the caller connects to exactly these (a second lookup could be
    answered differently: DNS rebinding).
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlRefused(f"invalid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(f"only http and https URLs may be called, not {parsed.scheme or 'a relative URL'!r}")
    host = parsed.host.lower().rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    allowed = host in {h.lower().rstrip(".") for h in allowed_hosts}
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = tuple(resolver(host, port))
    except (OSError, UnicodeError) as exc:
        raise StepFailed(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise StepFailed(f"cannot resolve {host}: no addresses")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = refusal_reason(address)
        if reason is None or (allow_private and allowed and reason != "cloud metadata"):
            continue
        if reason == "cloud metadata":
            hint = ""
        elif not allow_private:
            hint = " (this platform does not let steps reach private networks)"
        else:
            hint = " (a tenant may allow the host in its allowed_hosts)"
        raise UrlRefused(f"{host} resolves to {address}, a {reason} address{hint}")
    return Target(parsed, host, addresses)


class GuardedClient:
    """An httpx client that checks every URL it visits, redirects included, and connects only to checked addresses."""

    def __init__(
        self,
        allowed_hosts: Collection[str] = (),
        *,
        timeout: float = 30.0,
        resolver: Resolver = system_resolver,
        transport: httpx.BaseTransport | None = None,
        allow_private: bool = False,
    ) -> None:
        self._allowed = tuple(allowed_hosts)
        self._resolver = resolver
        self._allow_private = allow_private
        # No environment proxies (they would bypass the pinning) and no automatic redirects (each is checked).
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, transport=transport)

    def __enter__(self) -> GuardedClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send and follow up to `MAX_REDIRECTS` redirects; the response is streamed: the caller closes it."""
        current = httpx.URL(url)
        if query:
            current = current.copy_merge_params(dict(query))
        sent_headers = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}
        content: bytes | None = None
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
            sent_headers.setdefault("Content-Type", "application/json")
        for hop in range(MAX_REDIRECTS + 1):
            target = check_url(current, self._allowed, self._resolver, allow_private=self._allow_private)
            response = self._send(method, target, sent_headers, content, timeout)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or location is None:
                return response
            response.close()
            if hop == MAX_REDIRECTS:
                raise StepFailed(f"more than {MAX_REDIRECTS} redirects from {url}", retryable=False)
            following = current.join(location)
            if response.status_code == 303 or (response.status_code in (301, 302) and method not in ("GET", "HEAD")):
                method, content = "GET", None
                sent_headers = {k: v for k, v in sent_headers.items() if k.lower() != "content-type"}
            if (following.scheme, following.host, following.port) != (current.scheme, current.host, current.port):
                # Credentials meant for one origin are not handed to another.
                sent_headers = {k: v for k, v in sent_headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
            current = following
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self, method: str, target: Target, headers: Mapping[str, str], content: bytes | None, timeout: float | None
    ) -> httpx.Response:
        # Connect to the checked address; Host and TLS SNI (hence certificate checks) keep the real name.
        host_header = target.url.netloc.decode("ascii")
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        last_error: httpx.ConnectError | None = None
        for address in target.addresses:
            request = self._client.build_request(
                method,
                target.url.copy_with(host=address),
                headers={**headers, "Host": host_header},
                content=content,
                extensions=extensions,
                timeout=timeout if timeout is not None else self._client.timeout,
            )
            try:
                return self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = exc  # try the host's next address, like a browser would
        raise StepFailed(f"cannot connect to {target.host}: {last_error}")


def read_limited(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the (decoded) body and whether there was more; closes the response."""
    chunks: list[bytes] = []
    size = 0
    truncated = False
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                # Stop reading: a huge or decompression-bomb body never lands in memory.
                truncated = True
                break
    finally:
        response.close()
    return b"".join(chunks)[:limit], truncated
