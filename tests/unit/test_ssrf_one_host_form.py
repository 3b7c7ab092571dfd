# intent_ref: platform.modules
"""An outbound call names one host throughout: looked up, sent as TLS SNI, its certificate checked and its Host header,
all in the URL's ASCII form (IDNA 2008 A-labels), even for the letters the older IDNA rules map to others."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.modules import StepFailed
from shared.modules.ssrf import GuardedClient, check_url

# URLs whose host holds a letter (ß, final sigma, a zero-width joiner or non-joiner) that the older IDNA rules, which
# the resolver and TLS apply to a decoded name, turn into another name: `faß.de` became fass.de, another domain.
DEVIATIONS = [
    ("https://xn--fa-hia.de/hook", "xn--fa-hia.de"),
    ("https://faß.de/hook", "xn--fa-hia.de"),
    ("https://xn--strae-oqa.example/", "xn--strae-oqa.example"),
    ("https://straße.example/", "xn--strae-oqa.example"),
    ("https://ς.example/", "xn--3xa.example"),
    ("https://\u0915\u094d\u200d\u0937.example/", "xn--11b2ezcw70k.example"),  # a zero-width joiner
    ("https://\u0915\u094d\u200c\u0937.example/", "xn--11b2ezcs70k.example"),  # a zero-width non-joiner
]

PUBLIC = "93.184.216.34"


def _on_the_wire(host: str) -> bytes:
    """The name a str host goes out as, in a lookup and in TLS (SNI and the certificate's check)."""
    return host.encode("idna")


@pytest.mark.parametrize(("url", "a_label"), DEVIATIONS)
def test_the_host_is_looked_up_and_named_to_tls_as_the_host_header_names_it(url: str, a_label: str) -> None:
    asked: list[bytes] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(_on_the_wire(host))
        return [PUBLIC]

    target = check_url(url, [], resolver)
    assert target.url.netloc.decode("ascii") == a_label  # the Host header
    assert asked == [a_label.encode()]
    assert _on_the_wire(target.host) == a_label.encode()


@pytest.mark.parametrize(("url", "a_label"), DEVIATIONS)
def test_a_guarded_request_sends_sni_for_the_host_it_looked_up(url: str, a_label: str) -> None:
    asked: list[str] = []
    sent: list[tuple[str, str, object]] = []

    def resolver(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        return [PUBLIC]

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((str(request.url), request.headers["Host"], request.extensions.get("sni_hostname")))
        return httpx.Response(204)

    with GuardedClient(resolver=resolver, transport=httpx.MockTransport(answer)) as client:
        client.request("POST", url, json_body={}).close()
    sni = sent[0][2]
    assert isinstance(sni, str)
    assert [_on_the_wire(h) for h in asked] == [a_label.encode()]
    assert sent == [(f"https://{PUBLIC}{httpx.URL(url).path}", a_label, sni)]
    assert _on_the_wire(sni) == a_label.encode()


def test_an_ascii_name_and_an_ip_literal_are_looked_up_and_named_as_written() -> None:
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return [PUBLIC]

    assert check_url("https://Hooks.Example./in", [], resolver).host == "hooks.example"
    assert check_url(f"https://{PUBLIC}:8443/in", [], resolver).host == PUBLIC
    assert check_url("https://[2606:2800:220:1:248:1893:25C8:1946]/in", [], resolver).host == (
        "2606:2800:220:1:248:1893:25c8:1946"
    )
    assert asked == ["hooks.example", PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]


# --- Over real TLS: the certificate is checked for the name the Host header names. ---


@dataclass
class _Pki:
    """A certificate authority the client trusts, and files of server certificates it issued."""

    directory: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "one-host-form test authority")])
        self.name = name
        self.certificate = (
            self._builder(name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def issue(self, label: str, names: Sequence[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.directory / f"{label}.pem", self.directory / f"{label}.key"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_file, key_file


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


class _TlsServer:
    """A local HTTPS server presenting one certificate; records the SNI of each handshake and each request's Host."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.sni: list[str | None] = []
        self.hosts: list[str | None] = []
        server = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)

        def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
            server.sni.append(name)

        context.sni_callback = record_sni

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  # the stdlib's name
                server.hosts.append(self.headers.get("Host"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pki(tmp_path: Path) -> _Pki:
    return _Pki(tmp_path)


@pytest.fixture
def a_label_server(pki: _Pki) -> Iterator[_TlsServer]:
    """Serves a certificate for faß.de (as certificates name it: `xn--fa-hia.de`), an ASCII name and 127.0.0.1."""
    names: list[x509.GeneralName] = [
        x509.DNSName("xn--fa-hia.de"),
        x509.DNSName("hooks.example"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = _TlsServer(*pki.issue("faß", names))
    yield server
    server.close()


@pytest.fixture
def other_domain_server(pki: _Pki) -> Iterator[_TlsServer]:
    """Serves a certificate for fass.de alone: another domain than faß.de."""
    server = _TlsServer(*pki.issue("fass", [x509.DNSName("fass.de")]))
    yield server
    server.close()


def _client(pki: _Pki, asked: list[str], allowed: Sequence[str]) -> GuardedClient:
    def to_loopback(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    trusting = ssl.create_default_context(cafile=str(pki.ca_file))
    return GuardedClient(
        allowed, resolver=to_loopback, transport=httpx.HTTPTransport(verify=trusting), allow_private=True, timeout=10
    )


@pytest.mark.parametrize("host", ["faß.de", "xn--fa-hia.de"])
def test_tls_names_and_verifies_the_host_the_host_header_names(
    pki: _Pki, a_label_server: _TlsServer, host: str
) -> None:
    asked: list[str] = []
    with _client(pki, asked, ["faß.de"]) as client:
        response = client.request("GET", f"https://{host}:{a_label_server.port}/hook")
        assert response.read() == b"ok"
    assert asked == ["xn--fa-hia.de"]
    assert a_label_server.sni == ["xn--fa-hia.de"]
    assert a_label_server.hosts == [f"xn--fa-hia.de:{a_label_server.port}"]


def test_a_certificate_for_the_other_domain_the_older_rules_name_is_refused(
    pki: _Pki, other_domain_server: _TlsServer
) -> None:
    # fass.de's certificate was accepted for a call to faß.de: its checked name was mapped to fass.de.
    with _client(pki, [], ["faß.de"]) as client, pytest.raises(StepFailed, match="cannot connect to xn--fa-hia.de"):
        client.request("GET", f"https://faß.de:{other_domain_server.port}/hook")
    assert other_domain_server.sni == ["xn--fa-hia.de"]
    assert other_domain_server.hosts == []


def test_an_ascii_name_and_an_ip_literal_still_connect_over_tls(pki: _Pki, a_label_server: _TlsServer) -> None:
    asked: list[str] = []
    port = a_label_server.port
    with _client(pki, asked, ["hooks.example", "127.0.0.1"]) as client:
        for url in (f"https://Hooks.Example:{port}/hook", f"https://127.0.0.1:{port}/hook"):
            response = client.request("GET", url)
            assert response.read() == b"ok"
    assert asked == ["hooks.example", "127.0.0.1"]
    assert a_label_server.sni == ["hooks.example", None]  # no SNI for an address; its certificate names it
    assert a_label_server.hosts == [f"hooks.example:{port}", f"127.0.0.1:{port}"]
