# intent_ref: platform.identity
"""Key fetches never hold up other requests: a made-up `kid` is refused from the cache during the JWKS cooldown (on
the event loop, without a worker thread) and while another request fetches; keys past their hourly refresh keep
answering while one request refreshes them; only a request with no usable key waits for a fetch, and not forever.

The identity provider is a stand-in whose fetch can be held on an Event, so "answered while a fetch is held" is
checked directly; a request that would wait on the fetch is run on a thread and found still waiting after a bound."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from devhost.identity import DEFAULT_AUDIENCE, SigningKey, openid_configuration, sign_access_token
from shared.api import security as api_security
from shared.api.problems import ProblemError
from shared.auth import tokens
from shared.auth.principal import INTENT_READER
from shared.auth.tokens import (
    InvalidTokenError,
    KeysNotCachedError,
    SigningKeysUnavailableError,
    TokenValidator,
    VerifiedToken,
)
from tests.unit.edge_harness import BASE_URL, CONTOSO, METADATA_URL

COOLDOWN_S = 60.0
HANG_S = 2.0
"""How long a request may take before it is taken to be waiting on the held fetch (each answers in milliseconds)."""
HOLD_S = 10.0
"""The longest a held fetch waits to be let go, so that a test that fails does not hang."""


class HeldProvider:
    """The issuer's documents from memory; a fetch of a URL in `held_urls` waits until `release` is set."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.requests: list[str] = []
        self.held_urls: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.failing = False

    def fetch(self, url: str) -> dict[str, Any]:
        self.requests.append(url)
        if url in self.held_urls:
            self.entered.set()
            self.release.wait(HOLD_S)
        if self.failing:
            raise OSError("identity provider unreachable")
        if url == METADATA_URL:
            return openid_configuration(BASE_URL, "organizations")
        return self.key.jwks(BASE_URL)

    def jwks_uri(self) -> str:
        uri: str = openid_configuration(BASE_URL, "organizations")["jwks_uri"]
        return uri


class Clock:
    """Monotonic time moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Attempt:
    """One validation on its own thread: what it answered, or that it is still waiting."""

    def __init__(self, call: Callable[[], VerifiedToken]) -> None:
        self.outcome: VerifiedToken | Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], VerifiedToken]) -> None:
        try:
            self.outcome = call()
        except Exception as exc:  # the outcome is what the test looks at
            self.outcome = exc

    def answered_within(self, seconds: float) -> bool:
        """Whether it answered within `seconds` (False: it is waiting, on the held fetch)."""
        self._thread.join(seconds)
        return not self._thread.is_alive()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(Path(tmp_path_factory.mktemp("issuer")))


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(Path(tmp_path_factory.mktemp("forger")))


@pytest.fixture()
def provider(key: SigningKey) -> HeldProvider:
    return HeldProvider(key)


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def validator(provider: HeldProvider, clock: Clock) -> TokenValidator:
    validator = TokenValidator(
        METADATA_URL,
        DEFAULT_AUDIENCE,
        fetch=provider.fetch,
        clock=clock,
        jwks_cooldown_s=COOLDOWN_S,
        http_timeout_s=0.2,
    )
    validator.validate(_token_of(provider.key))  # warm: metadata and keys cached at clock 1000
    return validator


def _token_of(key: SigningKey, **kwargs: Any) -> str:
    return sign_access_token(key, tenant=str(CONTOSO), base_url=BASE_URL, roles=(INTENT_READER,), **kwargs)


def _forged(other_key: SigningKey, kid: str) -> str:
    """A well-formed token signed by a key the issuer never published, naming a key id of its own making."""
    claims = jwt.decode(_token_of(other_key), options={"verify_signature": False})
    return jwt.encode(claims, other_key.private_key, algorithm="RS256", headers={"kid": kid})


def _refused(call: Callable[[], VerifiedToken]) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as caught:
        call()
    return caught.value


def test_a_made_up_kid_within_the_cooldown_is_refused_on_the_event_loop(
    validator: TokenValidator, provider: HeldProvider, other_key: SigningKey
) -> None:
    forged = f"Bearer {_forged(other_key, 'made-up')}"
    # What `identified` does on the event loop: a verdict (401), not a request for a worker thread and the lock.
    with pytest.raises(ProblemError) as refused:
        api_security._identify(forged, validator, offline=True)
    assert refused.value.status == 401
    assert provider.requests.count(provider.jwks_uri()) == 1


def test_made_up_kids_are_refused_while_a_key_fetch_is_held(
    validator: TokenValidator, provider: HeldProvider, clock: Clock, key: SigningKey, other_key: SigningKey
) -> None:
    clock.now += COOLDOWN_S + 1
    provider.held_urls.add(provider.jwks_uri())
    try:
        # The first made-up kid after the cooldown fetches the key set (a rotation may be under way); it is held.
        fetching = Attempt(lambda: validator.validate(_forged(other_key, "made-up-0")))
        assert provider.entered.wait(HANG_S)
        # Every other one is refused from the cache, on the loop or on a thread, without waiting for that fetch.
        for n in range(1, 20):
            forged = _forged(other_key, f"made-up-{n}")
            online = Attempt(lambda: validator.validate(forged))  # noqa: B023
            assert online.answered_within(HANG_S), "a made-up kid waited for another request's key fetch"
            assert isinstance(online.outcome, InvalidTokenError)
            assert online.outcome.reason == "unknown signing key"
            assert _refused(lambda: validator.validate(forged, offline=True)).reason == "unknown signing key"  # noqa: B023
        # A genuine caller is answered meanwhile, from the event loop and from a thread.
        genuine = _token_of(key, oid="6f2b8a3c-1d4e-4f5a-9b6c-7d8e9f0a1b2c")
        assert validator.validate(genuine, offline=True).entra_tenant_id == CONTOSO
    finally:
        provider.release.set()
    assert fetching.answered_within(HANG_S)
    assert isinstance(fetching.outcome, InvalidTokenError)
    assert provider.requests.count(provider.jwks_uri()) == 2  # the warm-up's and the one held


def test_keys_due_for_refresh_answer_while_one_request_refreshes_them(
    validator: TokenValidator, provider: HeldProvider, clock: Clock, key: SigningKey
) -> None:
    clock.now += 3600 + 1  # past the hourly refresh, well within the stale bound
    provider.held_urls.add(METADATA_URL)
    provider.failing = True  # a slow issuer that then fails
    tokens = [_token_of(key, oid=f"6f2b8a3c-1d4e-4f5a-9b6c-7d8e9f0a1b{n:02d}") for n in range(20)]
    try:
        refreshing = Attempt(lambda: validator.validate(tokens[0]))
        assert provider.entered.wait(HANG_S)
        for token in tokens[1:]:
            # Answered from the cached keys, on the loop and on a thread, while the refresh is held.
            online = Attempt(lambda: validator.validate(token))  # noqa: B023
            assert online.answered_within(HANG_S), "a request with a usable cached key waited for the refresh"
            assert isinstance(online.outcome, VerifiedToken)
            assert validator.validate(token, offline=True).entra_tenant_id == CONTOSO
    finally:
        provider.release.set()
    # The refreshing request itself falls back on the cached keys once its fetches fail.
    assert refreshing.answered_within(HANG_S)
    assert isinstance(refreshing.outcome, VerifiedToken)
    assert provider.requests.count(METADATA_URL) == 2  # one refresh, however many requests found the keys due
    # Within the cooldown after the failed refresh, the cached keys answer on the loop: no thread, no fetch.
    assert validator.validate(tokens[1], offline=True).entra_tenant_id == CONTOSO
    assert provider.requests.count(METADATA_URL) == 2


def test_a_request_with_no_usable_key_waits_for_the_fetch_in_flight_and_not_forever(
    validator: TokenValidator, provider: HeldProvider, clock: Clock, key: SigningKey
) -> None:
    clock.now += 48 * 3600  # far past the stale bound: nothing cached may answer
    provider.held_urls.add(METADATA_URL)
    try:
        refreshing = Attempt(lambda: validator.validate(_token_of(key)))
        assert provider.entered.wait(HANG_S)
        with pytest.raises(KeysNotCachedError):
            validator.validate(_token_of(key), offline=True)
        # It waits for the fetch in flight (two fetches' timeouts and a second), then answers 503.
        waiting = Attempt(lambda: validator.validate(_token_of(key)))
        assert waiting.answered_within(HANG_S + 1.0), "a request waited on a held fetch without a bound"
        assert isinstance(waiting.outcome, SigningKeysUnavailableError)
    finally:
        provider.release.set()
    assert refreshing.answered_within(HANG_S)
    assert isinstance(refreshing.outcome, VerifiedToken)
    # Refreshed: the next request is answered from the new keys.
    assert validator.validate(_token_of(key), offline=True).entra_tenant_id == CONTOSO


def _trickling_server(stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    """A loopback HTTP server whose one answer sends its headers, then its body a byte at a time, every 50 ms."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                if stop.wait(0.05):
                    return
                connection.sendall(b" ")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_a_fetch_trickling_its_answer_ends_at_its_timeout() -> None:
    # The socket's timeout bounds each read, not the whole answer: a body trickling in a byte every 50 ms held the
    # refresh, and its lock, for its whole length (here 50 s; an issuer could make it as long as it liked).
    stop = threading.Event()
    server, thread = _trickling_server(stop)
    began = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            tokens._fetch_json(f"http://127.0.0.1:{server.getsockname()[1]}/keys", 0.3)
        assert time.monotonic() - began < HANG_S
    finally:
        stop.set()
        thread.join(timeout=HOLD_S)
        server.close()
