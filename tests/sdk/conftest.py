"""Compatibility suite: the real Azure SDK for Python against `kvbridge dev-vault`.

The session fixture starts the binary at $KVBRIDGE_BIN (default target/debug/kvbridge) with a seed
written here, waits for <state>/ready.json and stops it at the end. Everything goes over HTTPS
verified against the dev vault's CA (connection_verify=<state>/ca.pem); NAME.localhost is mapped to
127.0.0.1 inside this process so the SDK's challenge-resource check runs against
https://sdkvault.localhost:PORT.
"""

import datetime
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
VAULT = "sdkvault"
TENANT = "5f1c9a7e-2b4d-4e8f-9a0b-1c2d3e4f5a6b"
SECRET_SP = "sdk-secret-sp"
SECRET_SP_SECRET = "sdk-secret-sp-password"
CERT_SP = "sdk-cert-sp"
RESTRICTED = "sdk-restricted"
RESTRICTED_SECRET = "sdk-restricted-password"
SEEDED_SECRET = "seeded-secret"
SEEDED_VALUE = "seeded-value-\u00e9\u2713"
TIMEOUTS = {"connection_timeout": 10, "read_timeout": 60}

# --------------------------------------------------------------------------------------------
# NAME.localhost -> 127.0.0.1 inside this process (glibc here does not resolve *.localhost).
# --------------------------------------------------------------------------------------------
_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and (name.lower() == "localhost" or name.lower().endswith(".localhost")):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------------------------
# Certificate helpers (also used by the tests)
# --------------------------------------------------------------------------------------------
def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_key(kind):
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "RSA3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "EC": ec.SECP256R1()}[kind]
    return ec.generate_private_key(curve)


def make_ca(kind="RSA", cn="kvbridge SDK test CA"):
    key = make_key(kind)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca_key, ca_cert, kind="RSA", cn="app.sdk.test", sans=("app.sdk.test",)):
    key = make_key(kind)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def self_signed(kind="RSA", cn="sdk-cert-sp"):
    return make_ca(kind, cn)


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------------------------
# The dev vault process
# --------------------------------------------------------------------------------------------
class _VerifiedSession(requests.Session):
    """requests.Session pinned to the dev CA. `session.verify` alone is not enough: requests lets
    REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE from the environment override it, so pass verify per request."""

    def __init__(self, ca):
        super().__init__()
        self._ca = ca

    def request(self, method, url, **kwargs):
        kwargs.setdefault("verify", self._ca)
        return super().request(method, url, **kwargs)


class DevVault:
    def __init__(self, root, ready, log_path, proc):
        self.root = root
        self.ready = ready
        self.log_path = log_path
        self.proc = proc
        self.port = int(ready["port"])
        self.ca = ready["ca"]
        self.tenant = ready["tenant"]
        self.authority = f"https://localhost:{self.port}"
        self.vault_url = f"https://{VAULT}.localhost:{self.port}"
        self.ip_url = f"https://127.0.0.1:{self.port}"
        self.http = _VerifiedSession(self.ca)

    def admin(self, method, path, **kwargs):
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, f"{self.authority}/admin/{path}", **kwargs)

    def log_tail(self, n=60):
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"


def _write_seed(root):
    sp_key, sp_cert = self_signed("RSA", CERT_SP)
    (root / "sp-cert.pem").write_bytes(cert_pem(sp_cert))
    (root / "sp.pem").write_bytes(key_pem(sp_key) + cert_pem(sp_cert))
    # A second certificate that is NOT registered anywhere (negative test).
    rogue_key, rogue_cert = self_signed("RSA", "rogue")
    (root / "rogue.pem").write_bytes(key_pem(rogue_key) + cert_pem(rogue_cert))
    seed = {
        "tenant": TENANT,
        "vaults": [
            {
                "name": VAULT,
                "secrets": [{"name": SEEDED_SECRET, "value": SEEDED_VALUE, "contentType": "text/plain"}],
                "accessPolicies": [
                    {"identity": SECRET_SP, "secrets": ["all"], "certificates": ["all"], "keys": ["all"]},
                    {"identity": CERT_SP, "secrets": ["all"], "certificates": ["all"], "keys": ["all"]},
                    {"identity": RESTRICTED, "secrets": ["list"], "certificates": [], "keys": []},
                ],
            }
        ],
        "identities": [
            {"clientId": SECRET_SP, "secret": SECRET_SP_SECRET},
            {"clientId": CERT_SP, "certificates": ["sp-cert.pem"]},
            {"clientId": RESTRICTED, "secret": RESTRICTED_SECRET},
        ],
    }
    # JSON is valid YAML; no PyYAML needed.
    path = root / "seed.yaml"
    path.write_text(json.dumps(seed, indent=2))
    return path


@pytest.fixture(scope="session")
def dv(tmp_path_factory):
    binary = Path(os.environ.get("KVBRIDGE_BIN", REPO / "target" / "debug" / "kvbridge"))
    if not binary.is_absolute():
        binary = REPO / binary
    if not binary.exists():
        pytest.fail(f"kvbridge binary not found at {binary} (build it or set KVBRIDGE_BIN)")
    root = tmp_path_factory.mktemp("devvault")
    seed = _write_seed(root)
    state = root / "state"
    state.mkdir()
    log_path = root / "dev-vault.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(binary), "dev-vault", "--listen", "127.0.0.1:0", "--state", str(state), "--seed", str(seed)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(root),
    )
    ready_file = state / "ready.json"
    deadline = time.time() + 60
    ready = None
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                break
            if ready_file.exists():
                try:
                    ready = json.loads(ready_file.read_text())
                    break
                except ValueError:
                    pass  # partially written
            time.sleep(0.1)
        if ready is None:
            log.flush()
            tail = log_path.read_text(errors="replace")[-4000:]
            pytest.fail(f"dev-vault did not become ready (exit={proc.poll()}):\n{tail}")
        inst = DevVault(root, ready, log_path, proc)
        yield inst
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


# --------------------------------------------------------------------------------------------
# Credentials and clients
# --------------------------------------------------------------------------------------------
def secret_credential(dv, client_id=SECRET_SP, secret=SECRET_SP_SECRET):
    from azure.identity import ClientSecretCredential

    return ClientSecretCredential(
        dv.tenant, client_id, secret, authority=dv.authority, disable_instance_discovery=True,
        connection_verify=dv.ca, **TIMEOUTS,
    )


def certificate_credential(dv, path, client_id=CERT_SP):
    from azure.identity import CertificateCredential

    return CertificateCredential(
        dv.tenant, client_id, certificate_path=str(path), authority=dv.authority,
        disable_instance_discovery=True, connection_verify=dv.ca, **TIMEOUTS,
    )


def client_kwargs(dv):
    return dict(connection_verify=dv.ca, **TIMEOUTS)


@pytest.fixture(scope="session")
def credential(dv):
    return secret_credential(dv)


@pytest.fixture(scope="session")
def secret_client(dv, credential):
    from azure.keyvault.secrets import SecretClient

    return SecretClient(dv.vault_url, credential, **client_kwargs(dv))


@pytest.fixture(scope="session")
def key_client(dv, credential):
    from azure.keyvault.keys import KeyClient

    return KeyClient(dv.vault_url, credential, **client_kwargs(dv))


@pytest.fixture(scope="session")
def cert_client(dv, credential):
    from azure.keyvault.certificates import CertificateClient

    return CertificateClient(dv.vault_url, credential, **client_kwargs(dv))


@pytest.fixture
def faults_off(dv):
    """Make sure faults are reset after a test, whatever happens."""
    yield
    dv.admin("PUT", "faults", json={})
