"""Certificates for the TLS tests, made by a private CA (trustme) and written where a listener's
``cert_file``/``key_file`` name them; renewals replace the files as an operator's tool does."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from pathlib import Path

import trustme
from cryptography import x509

HOST = "127.0.0.1"


class Certificates:
    """A CA, the files of one listener's certificate in ``folder``, and clients that trust it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.client_ca = trustme.CA()
        """Signs the client certificates of mutual TLS (``client_ca_file``)."""
        self.cert_file = folder / "server.crt"
        self.key_file = folder / "server.key"
        self.client_ca_file = folder / "clients-ca.crt"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))
        self.served = self.renew(days=90)

    def renew(self, *, days: int) -> x509.Certificate:
        """A new key and certificate (a new serial) valid for ``days``, swapped in atomically
        (key first); the new certificate."""
        not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
        leaf = self.ca.issue_cert(HOST, not_after=not_after.replace(microsecond=0))
        self._replace(self.key_file, leaf.private_key_pem.bytes())
        self._replace(self.cert_file, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        self.served = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        return self.served

    def break_key(self) -> None:
        """A renewal gone wrong: a key that does not match the certificate."""
        other = self.ca.issue_cert(HOST)
        self._replace(self.key_file, other.private_key_pem.bytes())

    def _replace(self, path: Path, data: bytes) -> None:
        staged = path.with_suffix(path.suffix + ".new")
        staged.write_bytes(data)
        os.replace(staged, path)

    def toml(self, *, mutual: bool = False, interval: float | None = None) -> str:
        """The ``tls`` table of a listener, inline."""
        parts = [f'cert_file = "{self.cert_file}"', f'key_file = "{self.key_file}"']
        if mutual:
            parts.append(f'client_ca_file = "{self.client_ca_file}"')
        if interval is not None:
            parts.append(f"reload_interval_seconds = {interval}")
        return "{ " + ", ".join(parts) + " }"

    def client(self, *, with_certificate: bool = False) -> ssl.SSLContext:
        """A client context that trusts the CA (and presents a client certificate)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_certificate:
            self.client_ca.issue_cert("producer@example.com").configure_cert(context)
        return context


def served(sslobj: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate:
    """The certificate a server presented on a connection."""
    assert sslobj is not None
    der = sslobj.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def peer_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a listener on ``port`` serves now."""
    _, writer = await asyncio.open_connection(HOST, port, ssl=context)
    try:
        return served(writer.get_extra_info("ssl_object")).serial_number
    finally:
        writer.close()
        await writer.wait_closed()
