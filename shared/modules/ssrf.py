# intent_ref: platform.modules
"""SSRF guard (OWASP API7): outbound HTTP only to public addresses (or, in local development, allow-listed hosts)."""

from __future__ import annotations

import functools
import http.cookiejar
import ipaddress
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import httpx
import idna

from shared.config import get_settings
from shared.modules.contract import StepFailed

MAX_REDIRECTS = 5
ACCEPTED_ENCODINGS = "gzip, deflate"
"""What a guarded request asks for unless its caller says otherwise: the codings `read_limited` decodes."""
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
"""Cloud instance-metadata endpoints: they hand out the platform's credentials, so no allow-list opens them. Azure's
168.63.129.16 (WireServer, the platform's DNS resolver and health probes) is one though its address is public: it
answers calls from inside Azure with a machine's goal state, extension settings and certificates."""
SPECIAL_PURPOSE_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("192.0.0.0/24"), "special-purpose"),
    (ipaddress.ip_network("192.88.99.0/24"), "6to4 relay anycast"),
    (ipaddress.ip_network("fec0::/10"), "site-local"),
)
"""Blocks the stdlib's flags leave global (some, or all, of their addresses) that still reach no public receiver:
IETF protocol assignments (RFC 6890; refused whole, the few anycast services the registry lists as global in it,
such as 192.0.0.9, included: none is a webhook receiver or an HTTP endpoint a step calls), the deprecated 6to4
relay anycast (RFC 7526), whose relays sit in whichever network answers first, and the deprecated IPv6 site-local
block (RFC 3879), which routes inside a site like a private one."""
REDIRECTS = frozenset({301, 302, 303, 307, 308})
METHOD_KEEPING_REDIRECTS = frozenset({307, 308})
"""The redirects that send the same method and body again (RFC 9110 §15.4): the others turn a POST into a GET."""
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

MAX_PORT = 65535
_MAX_ERROR_CHARS = 200
"""Of an error's own text quoted in a refusal: a URL (and so its error) can be long."""

PRIVATE_NAME_SUFFIXES = ("localhost", ".localhost", ".internal", ".local", ".home.arpa")
"""Names that by convention resolve only inside a host or a private network (RFC 6761, RFC 6762, RFC 8375)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

# httpx logs every request's full URL at INFO, and a tenant's URL carries its secrets (user info, a path token, a
# query key). The Functions worker sets the root logger to INFO and forwards every record to the host, so the level
# is raised where the client is defined, on import, in every process that can call out; its warnings still pass.
# httpcore logs only at DEBUG.
logging.getLogger("httpx").setLevel(logging.WARNING)

logger = logging.getLogger(__name__)


class UrlRefused(StepFailed):
    """The URL may not be called from this tenant's steps."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def _bounded(exc: BaseException) -> str:
    """The error's text, at most `_MAX_ERROR_CHARS` characters of it."""
    text = str(exc)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


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
    for network, label in SPECIAL_PURPOSE_NETWORKS:
        if address in network:
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


def _host_key(raw_host: str) -> str | None:
    """`raw_host` (ASCII, as a URL sends it) in the form hosts are compared in, or None when it holds '%': an IPv6
    zone id (`fe80::1%25eth0`) or an escaped character, which no resolver takes (and a zone the resolver did take
    would be dropped from the address it answers), so such a host reaches nothing."""
    key = raw_host.lower().rstrip(".")
    if "%" in key:
        return None
    try:
        return str(ipaddress.ip_address(key))  # `FE80::0001` and `fe80::1` are one address
    except ValueError:
        return key


def a_label_refusal(host: str) -> str | None:
    """Why the ASCII name `host` is refused, or None: a label of it claims to be an IDNA A-label (`xn--`) and does
    not decode to a label IDNA 2008 allows. That refuses names some registries delegated under the older rules (an
    emoji's, `xn--ls8h.la`): the HTTP client already refused such a name as its first label and called it as any
    other (`www.xn--ls8h.la`), so one rule now holds for every label, of a URL's host and an allow-list entry alike."""
    for label in host.lower().rstrip(".").split("."):
        if not label.startswith("xn--"):
            continue
        try:
            idna.ulabel(label)
        except UnicodeError as exc:  # idna.IDNAError and its InvalidCodepoint among them
            return f"{label!r} is not a valid IDNA 2008 A-label ({_bounded(exc)})"
    return None


@functools.lru_cache(maxsize=4096)
def host_key(host: str) -> str | None:
    """The form in which an allow-list entry and a URL's host are compared, or None when `host` can match no URL's:
    a name as the HTTP client sends it (IDNA A-labels, so `bücher.example` and `xn--bcher-kva.example` are one
    name), lower-cased, without a final dot; an IP address in its compressed form. Comparing the decoded names
    missed an entry written in A-labels, since the client decodes a URL's host but the entry was taken as written."""
    try:
        raw = httpx.URL(scheme="http", host=host).raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError):  # UnicodeError (idna.IDNAError) among them
        return None
    return _host_key(raw) or None  # `.` names no host


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses it may be connected to."""

    url: httpx.URL
    host: str
    """The URL's host in ASCII (IDNA 2008 A-labels, as the Host header sends it): what was resolved, and what TLS
    sends as SNI and checks the certificate against."""
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
    # Every label by one rule, the first one included, before the client's own decoding below refuses a first label
    # in other words.
    malformed = a_label_refusal(parsed.raw_host.decode("ascii"))
    if malformed is not None:
        raise UrlRefused(f"invalid host name in the URL: {malformed}")
    try:
        # `host` decodes the name (IDNA) only when asked: a malformed A-label (`xn--`) raises UnicodeError
        # (idna.IDNAError) here, and whatever a URL holds must end as a refusal, never as another error.
        parsed.host  # noqa: B018  # asked for its check alone
        given_port = parsed.port
    except ValueError as exc:  # UnicodeError among them
        raise UrlRefused(f"invalid host name in the URL: {_bounded(exc)}") from None
    # The name is looked up, and TLS names and verifies it, in the ASCII form the Host header and the allow-list
    # use (IDNA 2008 A-labels). The decoded name would be encoded again by the resolver and by TLS with the older
    # IDNA rules, which map `ß`, `ς` and the joiners to other letters: `faß.de` reached fass.de and accepted its
    # certificate while sending `Host: xn--fa-hia.de`.
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    if given_port is not None and not 1 <= given_port <= MAX_PORT:
        # The resolver would raise OverflowError on a port past C's int, and no connection can use port 0 or one
        # past 65535.
        raise UrlRefused(f"the URL's port must be between 1 and {MAX_PORT}")
    key = _host_key(parsed.raw_host.decode("ascii"))
    if key is None:
        raise UrlRefused("the URL's host holds '%' (an IPv6 zone id or an escaped character): no step can reach it")
    allowed = key in {host_key(entry) for entry in allowed_hosts if isinstance(entry, str)}
    port = given_port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = tuple(resolver(host, port))
    except (OSError, UnicodeError, OverflowError) as exc:
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
        # The address stays in the server's log: told to a tenant (a save's 422, a delivery's log), it answered what
        # a private name resolves to, and the platform was a resolver of private DNS names for anyone.
        logger.info("ssrf: refused %s: it resolves to %s, a %s address", host, address, reason)
        raise UrlRefused(f"{host} resolves to a non-public address ({reason}){hint}")
    return Target(parsed, host, addresses)


class DeadlineExceeded(httpx.TimeoutException):
    """An exchange took longer than its time limit as a whole: connecting, redirects, headers and body together."""


class _Deadline:
    """The time limit of one exchange. httpx's timeouts bound each socket operation, so a server that answers a byte
    at a time never trips them; when this one passes, the sockets the exchange connected are shut down, which ends a
    read blocked on them at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = False
        self._ended = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def passed(self) -> bool:
        return self._fired or time.monotonic() >= self._ends

    def remaining(self) -> float:
        return max(self._ends - time.monotonic(), 0.0)

    def exceeded(self, host: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"no complete answer from {host} within {self.seconds:g} s")

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's `trace` extension: takes each connection's socket as soon as it is connected."""
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        # A descriptor of our own for the same connection: TLS detaches httpcore's socket object, and a number
        # httpcore has closed may already belong to another connection; this one is ours until the exchange ends.
        watched = sock.dup()
        with self._lock:
            if not (self._fired or self._ended):
                self._sockets.append(watched)
                return
            late = not self._ended
        if late:
            _shut_down(watched)
        watched.close()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut_down(sock)
            sock.close()

    def end(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._ended = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shut_down(sock: socket.socket) -> None:
    try:
        # Unlike close, shutdown wakes a thread blocked reading the connection (it reads the end of the stream).
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already by the other side


MAX_LOOKUPS = 32
"""Name lookups in flight in one process, each on a thread of its own: the bound on threads a late lookup leaves."""
MAX_LOOKUPS_PER_TENANT = 8
"""Of those, one tenant's: a tenant whose names never answer (its own domain, a silent name server) cannot take the
places every other tenant's outbound calls in the process need."""
LOOKUPS_KEPT_FREE = MAX_LOOKUPS // 4
"""Places only a tenant with no lookup in flight may take: one with a lookup in flight takes another only while more
than these stay free, so that four tenants at MAX_LOOKUPS_PER_TENANT cannot take every place, and the next tenant's
lookup still finds one."""
MAX_LOOKUPS_PER_HOST = 2
"""Of a tenant's, lookups of one host: its name that never answers cannot take the rest of its share, and another
tenant's lookups of the same name are not counted against it."""

Tenant = UUID | None
"""Whose outbound call a lookup is for (a tenant's id); None, the platform's own calls, counts as one tenant."""


_K = TypeVar("_K", bound=Hashable)


class LookupsBusy(StepFailed):
    """A lookup refused a place: earlier lookups (of its host, of its tenant, or of the process) still wait. Raised
    by `check_url_within`, and by a GuardedClient made with `busy=LookupsBusy` (a webhook send's) before its first
    request went out; a step's refused lookup stays a plain StepFailed."""


def _count_down(counts: dict[_K, int], key: _K) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class _Lookups:
    """Counts the lookups in flight, in all, per tenant and per (tenant, host), and refuses one beyond any bound:
    past MAX_LOOKUPS in all, or, for a tenant with a lookup in flight already, once only LOOKUPS_KEPT_FREE are left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._by_tenant: dict[Tenant, int] = {}
        self._by_host: dict[tuple[Tenant, str], int] = {}

    def begin(self, tenant: Tenant, host: str, busy: type[StepFailed] = StepFailed) -> None:
        key = (tenant, host)
        with self._lock:
            in_flight = self._by_tenant.get(tenant, 0)
            if (
                self._total >= MAX_LOOKUPS
                or (in_flight and MAX_LOOKUPS - self._total <= LOOKUPS_KEPT_FREE)
                or in_flight >= MAX_LOOKUPS_PER_TENANT
                or self._by_host.get(key, 0) >= MAX_LOOKUPS_PER_HOST
            ):
                # Retryable: the lookups holding the place end within the resolver's own timeouts.
                raise busy(f"cannot resolve {host}: earlier lookups of it (or too many others) still wait")
            self._total += 1
            self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1
            self._by_host[key] = self._by_host.get(key, 0) + 1

    def end(self, tenant: Tenant, host: str) -> None:
        with self._lock:
            self._total -= 1
            _count_down(self._by_tenant, tenant)
            _count_down(self._by_host, (tenant, host))


_lookups = _Lookups()


def _resolving_within(
    resolver: Resolver, deadline: _Deadline, tenant: Tenant = None, *, busy: type[StepFailed] = StepFailed
) -> Resolver:
    """`resolver`, each lookup bounded by `deadline`: a name whose servers answer slowly (a tenant can choose its
    own) held the exchange for the system resolver's own timeouts and retries, beyond any deadline. A lookup cannot
    be interrupted, so one past its deadline finishes alone on its thread: at most MAX_LOOKUPS of them in a process,
    MAX_LOOKUPS_PER_TENANT of `tenant`'s, MAX_LOOKUPS_PER_HOST of one host of its (`busy`, retryable, beyond)."""

    def resolve(host: str, port: int) -> Sequence[str]:
        if "%" not in host and _ip_literal(host) is not None:  # a zone suffix may name anything: looked up
            # Nothing to look up, nothing to wait for: a literal took a place of its host's two, and parallel steps
            # to one address failed at random with "earlier lookups of it still wait".
            return resolver(host, port)
        answer: list[Sequence[str]] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def look_up() -> None:
            try:
                answer.append(resolver(host, port))
            except BaseException as exc:  # handed to the waiting caller, which raises it
                failure.append(exc)
            finally:
                _lookups.end(tenant, host)
                done.set()

        _lookups.begin(tenant, host, busy)
        try:
            threading.Thread(target=look_up, name="qp-resolve", daemon=True).start()
        except BaseException:
            _lookups.end(tenant, host)
            raise
        if not done.wait(deadline.remaining()):
            raise deadline.exceeded(host)
        if failure:
            raise failure[0]
        return answer[0]

    return resolve


def check_url_within(
    url: str | httpx.URL,
    allowed_hosts: Collection[str] = (),
    resolver: Resolver = system_resolver,
    *,
    seconds: float,
    tenant: Tenant = None,
    allow_private: bool = False,
) -> Target:
    """`check_url`, its lookup bounded as a guarded request's are (`_resolving_within`): for a check a caller waits
    for on a request's thread (a webhook URL when it is saved). Past `seconds`, DeadlineExceeded; LookupsBusy when
    `tenant`'s lookups (or the process's) have no place left. The unbounded lookup held the request's thread for
    the resolver's own timeouts and retries, and took no place: a tenant's names that never answer held threads
    every tenant's requests need."""
    deadline = _Deadline(seconds)
    try:
        bounded = _resolving_within(resolver, deadline, tenant, busy=LookupsBusy)
        return check_url(url, allowed_hosts, bounded, allow_private=allow_private)
    finally:
        deadline.end()


class _BoundedBody(httpx.SyncByteStream):
    """A response body read within its exchange's deadline; closing it ends the deadline."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: _Deadline, host: str) -> None:
        self._inner = inner
        self._deadline = deadline
        self._host = host

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                if self._deadline.passed:
                    raise self._deadline.exceeded(self._host)
                yield chunk
        except DeadlineExceeded:
            raise
        except httpx.HTTPError:
            # The shut-down connection reads as a peer that hung up; the deadline is what happened.
            if self._deadline.passed:
                raise self._deadline.exceeded(self._host) from None
            raise
        if self._deadline.passed:  # a body without a length ends where the connection was shut down
            raise self._deadline.exceeded(self._host)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._deadline.end()


def _bad_location(exc: BaseException) -> UrlRefused:
    """The refusal of a redirect whose Location does not parse as a URL that may be called."""
    return UrlRefused(f"the redirect's Location is not a URL that may be called: {_bounded(exc)}")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: what credentials are bound to. ValueError when the host is not a valid name."""
    return url.scheme, url.host, url.port


def _origin_text(url: httpx.URL) -> str:
    """`scheme://host[:port]` of a URL, for a message: a URL's path, query and user info can hold its secrets (a chat
    service's webhook path is its token), and the message reaches telemetry and a tenant's other receivers."""
    host = url.raw_host.decode("ascii", errors="replace")  # `host` would decode the name, which can fail (`xn--`)
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://[{host}]{port}" if ":" in host else f"{url.scheme}://{host}{port}"


def redirect_origin(response: httpx.Response, url: str) -> str | None:
    """`scheme://host[:port]` of where a redirect answered to `url` points (its Location read against `url`, not
    against the pinned address the request went to): None when it is not a redirect, or has no Location that parses."""
    location = response.headers.get("location")
    if response.status_code not in REDIRECTS or location is None:
        return None
    try:
        return _origin_text(httpx.URL(url).join(location))
    except (httpx.InvalidURL, ValueError):  # ValueError: a name that is not IDNA (`xn--`)
        return None


class GuardedClient:
    """An httpx client that checks every URL it visits, redirects included, and connects only to checked addresses.
    A request's timeout bounds the whole exchange, its redirects and the reading of its body included."""

    def __init__(
        self,
        allowed_hosts: Collection[str] = (),
        *,
        timeout: float = 30.0,
        resolver: Resolver = system_resolver,
        transport: httpx.BaseTransport | None = None,
        allow_private: bool = False,
        tenant: Tenant = None,
        busy: type[StepFailed] = StepFailed,
        https_redirects_only: bool = False,
    ) -> None:
        """`tenant` (its id) is whose calls these are: its name lookups count against its share of the process's
        (MAX_LOOKUPS_PER_TENANT); None, the platform's own calls, counts as one tenant. `busy` is what a lookup
        refused a place raises while nothing of the request has gone out (a webhook send's LookupsBusy: not an
        attempt); once a hop has been sent, a refused lookup of a redirect's host is a plain StepFailed. With
        `https_redirects_only` (a webhook send outside local development), a redirect to a URL that is not https
        is refused (UrlRefused) before anything is sent to it: the signed body would go out unencrypted."""
        self._allowed = tuple(allowed_hosts)
        self._resolver = resolver
        self._allow_private = allow_private
        self._tenant = tenant
        self._busy = busy
        self._https_redirects_only = https_redirects_only
        self._timeout = timeout
        # No environment proxies (they would bypass the pinning) and no automatic redirects (each is checked). No
        # connection is kept for the next request: a reused one reports no socket, and the deadline needs it. No
        # cookies: the jar would key a receiver's Set-Cookie by the pinned address and send it to every host and port
        # on that address, across redirects that drop the caller's credentials and across the deliveries and steps
        # that share the client (a policy that allows no domain stores none and sends none).
        self._client = httpx.Client(
            timeout=timeout,
            cookies=http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

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
        follow_redirects: frozenset[int] = REDIRECTS,
    ) -> httpx.Response:
        """Send and follow up to `MAX_REDIRECTS` redirects; the response is streamed: the caller closes it.

        `timeout` (the client's when None) bounds the exchange until the response is closed: connecting, every
        hop, the headers and the reading of the body; past it, DeadlineExceeded (an httpx.TimeoutException). A
        redirect whose status is not in `follow_redirects` is the answer, returned as any other (`redirect_origin`
        names where to)."""
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UrlRefused(f"invalid URL: {exc}") from None
        if query:
            current = current.copy_merge_params(dict(query))
        sent_headers = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}
        if not any(k.lower() == "accept-encoding" for k in sent_headers):
            sent_headers["Accept-Encoding"] = ACCEPTED_ENCODINGS
        content: bytes | None = None
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
            sent_headers.setdefault("Content-Type", "application/json")
        deadline = _Deadline(timeout if timeout is not None else self._timeout)
        # Only for messages until the URL is checked: `host` would decode the name, which can fail (`xn--`).
        host = current.raw_host.decode("ascii", errors="replace")
        origin = _origin_text(current)  # the request's, for messages: never its path or query
        handed_over = False
        try:
            first = _resolving_within(self._resolver, deadline, self._tenant, busy=self._busy)
            later = _resolving_within(self._resolver, deadline, self._tenant)
            for hop in range(MAX_REDIRECTS + 1):
                resolver = first if hop == 0 else later  # nothing sent yet: the caller's `busy`
                target = check_url(current, self._allowed, resolver, allow_private=self._allow_private)
                host = target.host
                response = self._send(method, target, sent_headers, content, deadline)
                if deadline.passed:
                    response.close()
                    raise deadline.exceeded(host)
                location = response.headers.get("location")
                if response.status_code not in follow_redirects or location is None:
                    assert isinstance(response.stream, httpx.SyncByteStream)  # a sync client's
                    response.stream = _BoundedBody(response.stream, deadline, host)
                    handed_over = True  # the response's close ends the deadline
                    return response
                response.close()
                if hop == MAX_REDIRECTS:
                    raise StepFailed(f"more than {MAX_REDIRECTS} redirects from {origin}", retryable=False)
                try:
                    following = current.join(location)
                    same_origin = _origin(following) == _origin(current)
                except (httpx.InvalidURL, ValueError) as exc:  # ValueError: a name that is not IDNA (`xn--`)
                    raise _bad_location(exc) from None
                if self._https_redirects_only and following.scheme != "https":
                    to = _origin_text(following)  # never its path or query: they can hold the receiver's secrets
                    raise UrlRefused(
                        f"{_origin_text(current)} redirected to {to}, which is not https: a redirect must keep to"
                        " https, or what is sent would go out unencrypted"
                    )
                if response.status_code == 303 or (
                    response.status_code in (301, 302) and method not in ("GET", "HEAD")
                ):
                    method, content = "GET", None
                    sent_headers = {k: v for k, v in sent_headers.items() if k.lower() != "content-type"}
                if not same_origin:
                    # Credentials meant for one origin are not handed to another.
                    sent_headers = {k: v for k, v in sent_headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
                current = following
        except DeadlineExceeded:
            raise
        except httpx.HTTPError:
            # The shut-down connection reads as a peer that hung up; the deadline is what happened.
            if deadline.passed:
                raise deadline.exceeded(host) from None
            raise
        finally:
            if not handed_over:
                deadline.end()
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self, method: str, target: Target, headers: Mapping[str, str], content: bytes | None, deadline: _Deadline
    ) -> httpx.Response:
        # Connect to the checked address; Host and TLS SNI (hence certificate checks) keep the real name, both in
        # the one ASCII form the address was resolved for.
        host_header = target.url.netloc.decode("ascii")
        extensions: dict[str, Any] = {"trace": deadline.trace}
        if target.url.scheme == "https":
            extensions["sni_hostname"] = target.host
        last_error: httpx.ConnectError | None = None
        for address in target.addresses:
            if deadline.passed:
                raise deadline.exceeded(target.host)
            request = self._client.build_request(
                method,
                target.url.copy_with(host=address),
                headers={**headers, "Host": host_header},
                content=content,
                extensions=extensions,
                # Each socket operation gets what is left, so that connecting cannot outlast the deadline either.
                timeout=deadline.remaining(),
            )
            try:
                return self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = exc  # try the host's next address, like a browser would
            except UnicodeError as exc:
                # httpx reads a redirect's Location as it answers, and a name there that is not IDNA (`xn--`) raises
                # this; the request's own URL holds a checked address, so the Location is what it is about.
                raise _bad_location(exc) from None
        raise StepFailed(f"cannot connect to {target.host}: {last_error}")


def read_limited(response: httpx.Response, limit: int, *, decode: bool = True) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, decoded (gzip or deflate, one layer) unless `decode` is off, and whether
    there was more; closes the response. StepFailed when the body is in an encoding it does not decode.

    httpx decodes a whole network read at once, stacked encodings (`gzip, gzip`) included, before anyone can count
    it: a 1 KiB body could become gigabytes in memory. The raw bytes are read here and inflated a bounded piece at a
    time; the raw bytes are bounded too, for a compressed stream can be made to inflate to nothing."""
    try:
        inflate = _inflater(response) if decode else None
        chunks: list[bytes] = []
        size = raw_size = 0
        truncated = False
        for data in response.iter_raw():
            raw_size += len(data)
            while data:
                if inflate is None:
                    piece, data = data, b""
                else:
                    try:
                        piece = inflate.decompress(data, limit + 1 - size)
                    except zlib.error as exc:
                        raise StepFailed(f"the response's body could not be decoded: {exc}") from None
                    data = inflate.unconsumed_tail
                chunks.append(piece)
                size += len(piece)
                if size > limit or (not piece and data):
                    break
            if size > limit or raw_size > _RAW_LIMIT_FACTOR * limit + _RAW_ALLOWANCE:
                truncated = True
                break
    finally:
        response.close()
    return b"".join(chunks)[:limit], truncated


_RAW_LIMIT_FACTOR = 2
_RAW_ALLOWANCE = 64 * 1024
"""Raw bytes read for a decoded limit: twice the limit and 64 KiB; real compression only shrinks a body."""


def _inflater(response: httpx.Response) -> Any:
    """A bounded decompressor for the response's one content coding, None for identity; StepFailed otherwise."""
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if len(codings) == 1 and codings[0] == "deflate":
        return _Deflate()
    raise StepFailed(f"the response's Content-Encoding {', '.join(codings)!r} is not supported", retryable=False)


class _Deflate:
    """`deflate` as servers send it: zlib-wrapped as the standard says, or raw as some send it (told apart by the
    zlib header, as browsers do)."""

    def __init__(self) -> None:
        self._inner: Any = None
        self._head = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._inner is None:
            # The zlib header is two bytes, and a network read can bring one: it waits for the second.
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            wrapped = data[0] & 0x0F == 8 and int.from_bytes(data[:2], "big") % 31 == 0
            self._inner = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        return bytes(self._inner.decompress(data, max_length))

    @property
    def unconsumed_tail(self) -> bytes:
        return b"" if self._inner is None else bytes(self._inner.unconsumed_tail)
