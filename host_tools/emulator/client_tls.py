"""TLS for the emulator's endpoints that asks every client for a certificate and accepts whatever it presents, so that
authentication happens at CONNECT, as edgeHub does (its TLS validation callback accepts any certificate and keeps it
with its chain) and as DPS does (a bad certificate gets 401002, not a failed handshake).

CPython's `ssl` cannot accept an arbitrary client certificate (it verifies against its own store or fails the
handshake), so the connection is driven by pyOpenSSL behind the `ssl.SSLObject` interface that asyncio's
`start_tls` uses: `ClientCertContext` is an `ssl.SSLContext` whose `wrap_bio` returns such an object. The client
still proves it holds the key (TLS CertificateVerify): a certificate with someone else's key fails the handshake.

After the handshake, `peer_certificates(writer)` gives the presented certificates (device certificate first) as
`cryptography` objects; the endpoints judge them (`x509_auth.py`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

_READ_SIZE = 64 * 1024


def _accept_any(_connection, _certificate, _errno, _depth, _ok) -> bool:
    return True


class ClientCertContext(ssl.SSLContext):
    """A server `ssl.SSLContext` (for asyncio) whose connections ask for a client certificate and accept any."""

    _chain_file: str | None = None
    _key_file: str | None = None
    _openssl: SSL.Context | None = None

    def __new__(cls, protocol=ssl.PROTOCOL_TLS_SERVER, *args, **kwargs):
        return super().__new__(cls, protocol, *args, **kwargs)

    def load_cert_chain(self, certfile, keyfile=None, password=None):
        super().load_cert_chain(certfile, keyfile, password)  # the same checks (and errors) as before
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.use_certificate_chain_file(str(certfile))
        context.use_privatekey_file(str(keyfile or certfile))
        context.check_privatekey()
        # Ask for a certificate (clients without one carry on: SAS devices) and accept any certificate presented.
        context.set_verify(SSL.VERIFY_PEER, _accept_any)
        context.set_session_id(b"azprov-emulator")
        self._chain_file, self._key_file, self._openssl = str(certfile), str(keyfile or certfile), context

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        if not server_side or self._openssl is None:
            raise ValueError("ClientCertContext serves the server side only, after load_cert_chain()")
        return ClientCertObject(self._openssl, incoming, outgoing)


class ClientCertObject:
    """The subset of `ssl.SSLObject` asyncio's SSL protocol uses, over a pyOpenSSL memory-BIO connection."""

    server_side = True
    server_hostname = None

    def __init__(self, context: SSL.Context, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
        self._connection = SSL.Connection(context, None)
        self._connection.set_accept_state()
        self._incoming, self._outgoing = incoming, outgoing

    def _run(self, operation, *args):
        data = self._incoming.read()
        if data:
            self._connection.bio_write(data)
        try:
            return operation(*args)
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("read would block") from None
        except SSL.WantWriteError:
            raise ssl.SSLWantWriteError("write would block") from None
        except SSL.ZeroReturnError:
            raise
        except SSL.SysCallError as exc:
            raise ssl.SSLEOFError(f"connection ended: {exc}") from None
        except SSL.Error as exc:
            raise ssl.SSLError(f"TLS: {_describe(exc)}") from None
        finally:
            self._flush()

    def _flush(self) -> None:
        while True:
            try:
                data = self._connection.bio_read(_READ_SIZE)
            except SSL.WantReadError:
                return
            if not data:
                return
            self._outgoing.write(data)

    def do_handshake(self) -> None:
        self._run(self._connection.do_handshake)

    def read(self, n=1024, buffer=None):
        try:
            data = self._run(self._connection.recv, n)
        except SSL.ZeroReturnError:  # close_notify: end of stream, as ssl.SSLObject reports it
            data = b""
        if buffer is None:
            return data
        buffer[: len(data)] = data
        return len(data)

    def write(self, data) -> int:
        return self._run(self._connection.send, bytes(data))

    def unwrap(self) -> None:
        done = self._run(self._connection.shutdown)
        if not done:
            raise ssl.SSLWantReadError("waiting for the peer's close_notify")

    def pending(self) -> int:
        return self._connection.pending()

    def getpeercert(self, binary_form=False):
        certificate = self._connection.get_peer_certificate(as_cryptography=True)
        if binary_form:
            return None if certificate is None else certificate.public_bytes(Encoding.DER)
        return {} if certificate is None else {"subject": ((("commonName", _cn(certificate)),),)}

    def cipher(self):
        name = self._connection.get_cipher_name()
        return (name, self._connection.get_protocol_version_name(), self._connection.get_cipher_bits())

    def compression(self):
        return None

    def version(self):
        return self._connection.get_protocol_version_name()

    def selected_alpn_protocol(self):
        return None

    def peer_certificates(self) -> list[x509.Certificate]:
        """The certificates the client presented, its own first, then the chain it sent (as sent)."""
        own = self._connection.get_peer_certificate(as_cryptography=True)
        if own is None:
            return []
        chain = self._connection.get_peer_cert_chain(as_cryptography=True) or []
        # On the server side OpenSSL's chain leaves out the client's own certificate; tolerate either form.
        return [own] + [c for c in chain if c != own]


def _describe(exc: SSL.Error) -> str:
    try:
        return "; ".join(reason for _lib, _func, reason in exc.args[0]) or "handshake failed"
    except (IndexError, TypeError, ValueError):
        return str(exc) or "handshake failed"


def _cn(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def server_context(cert_file: Path, key_file: Path) -> ClientCertContext:
    """TLS 1.2+ server context that asks for (and accepts) client certificates."""
    context = ClientCertContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def peer_certificates(writer) -> list[x509.Certificate]:
    """What the client of an asyncio stream presented in the handshake (empty list when nothing)."""
    ssl_object = writer.get_extra_info("ssl_object")
    if isinstance(ssl_object, ClientCertObject):
        return ssl_object.peer_certificates()
    return []
