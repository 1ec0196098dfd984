"""A throw-away PKI for a demonstration of key delivery (and for tests): a CA, one KME server
certificate and one client certificate per SAE (CN = the SAE's id), made with the
``cryptography`` package. Not for a deployment: the CA's key is never written, so the set
cannot grow; run it again for new SAEs.

    pki = write_demo_pki(tmp / "pki", saes=["sae-alice-1", "sae-bob-1"])
    cert, key = pki.clients["sae-alice-1"]
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qnode.daemon.runtime.kme_config import ID_RE


@dataclasses.dataclass(frozen=True)
class DemoPki:
    """The files :func:`write_demo_pki` wrote."""

    ca: Path                  # the CA certificate: the KME's trust anchor and the SAEs'
    server_cert: Path         # the KMEs' server certificate and key
    server_key: Path
    clients: Mapping[str, tuple[Path, Path]]  # SAE id -> (certificate, key)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its mode through O_CREAT
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write(path, key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


class _Ca:
    def __init__(self, days: int):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.days = days
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            self._builder(_name("qnode demo KME CA"), self.key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))

    def _builder(self, subject: x509.Name, public: ec.EllipticCurvePublicKey,
                 now: datetime.datetime) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(_name("qnode demo KME CA"))
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=self.days))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                               critical=False))

    def issue(self, cn: str, usage: x509.ObjectIdentifier,
              san: x509.SubjectAlternativeName | None = None
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            self._builder(_name(cn), key.public_key(), now)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def write_demo_pki(directory: str | os.PathLike[str],
                   kme_hosts: Iterable[str] = ("127.0.0.1",),
                   saes: Iterable[str] = (), *, days: int = 30) -> DemoPki:
    """Write ``ca.crt``, ``kme.crt``/``kme.key`` (for ``kme_hosts`` and ``localhost``) and
    ``<sae>.crt``/``<sae>.key`` per SAE id into ``directory`` (made 0700 if new); keys 0600."""
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    saes = list(saes)
    for sae in saes:
        if not ID_RE.fullmatch(sae) or sae in ("ca", "kme"):
            raise ValueError(f"not a usable SAE id: {sae!r}")
    ca = _Ca(days)
    _write_cert(out / "ca.crt", ca.cert)
    cert, key = ca.issue("qnode KME", ExtendedKeyUsageOID.SERVER_AUTH, _san(kme_hosts))
    _write_cert(out / "kme.crt", cert)
    _write_key(out / "kme.key", key)
    clients = {}
    for sae in saes:
        cert, key = ca.issue(sae, ExtendedKeyUsageOID.CLIENT_AUTH)
        _write_cert(out / f"{sae}.crt", cert)
        _write_key(out / f"{sae}.key", key)
        clients[sae] = (out / f"{sae}.crt", out / f"{sae}.key")
    return DemoPki(ca=out / "ca.crt", server_cert=out / "kme.crt", server_key=out / "kme.key",
                   clients=clients)
