"""A throw-away PKI for TLS tests, made with the openssl command line (not a test module).

    pki = Pki(tmp_path / "pki")          # CA, and a server certificate for 127.0.0.1
    cert, key = pki.client("alice")      # a client certificate whose CN is the node id
"""
from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Pki:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.crt"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=qnode test CA",
                 cwd=self.dir)
        self.server_cert, self.server_key = self._issue("server", "127.0.0.1",
                                                        san="IP:127.0.0.1,DNS:localhost")

    def _issue(self, name: str, cn: str, san: str | None = None) -> tuple[Path, Path]:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=self.dir)
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name,
                 cwd=self.dir)
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def client(self, node: str) -> tuple[Path, Path]:
        """A client certificate and key with CN = ``node``."""
        return self._issue(f"client-{node}", node)

    def shipped_options(self, conf: Path, acl: Path) -> str:
        """The lines of the shipped mosquitto config ``conf`` with this PKI's files and ``acl``
        in place of the deployment's paths, for the test broker's listener (which sets its own
        ``listener``, ``allow_anonymous`` and ``max_queued_messages``)."""
        paths = {"cafile": self.ca, "certfile": self.server_cert, "keyfile": self.server_key,
                 "acl_file": acl}
        own = {"listener", "allow_anonymous", "max_queued_messages"}
        lines = []
        for line in conf.read_text().splitlines():
            option = line.split("#", 1)[0].split()
            if not option or option[0] in own:
                continue
            lines.append(f"{option[0]} {paths[option[0]]}" if option[0] in paths
                         else " ".join(option))
        return "\n".join(lines) + "\n"

    def listener_options(self, acl: Path | None = None) -> str:
        """mosquitto listener lines: TLS with required client certificates whose CN becomes the
        user name (for the ACL's %u)."""
        lines = [f"cafile {self.ca}", f"certfile {self.server_cert}",
                 f"keyfile {self.server_key}", "require_certificate true",
                 "use_identity_as_username true"]
        if acl is not None:
            lines.append(f"acl_file {acl}")
        return "\n".join(lines) + "\n"


def sae_context(ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A TLS client context for an SAE: trusts the KMEs' ``ca`` and presents ``cert``/``key``
    (its client certificate names it)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
