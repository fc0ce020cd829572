import base64
import hashlib
import re

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.certificates import (
    CertificateContentType,
    CertificatePolicy,
    KeyCurveName,
    KeyType,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from conftest import cert_pem, key_pem, make_ca, make_leaf, unique

HEX32 = re.compile(r"^[0-9a-f]{32}$")
PASSWORD = "s3cret-pfx-pw"
PEM_KEY = re.compile(rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----.+?-----END (?:RSA |EC )?PRIVATE KEY-----", re.S)


def _der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def _same_public_key(a, b):
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def _pfx(key, leaf, chain, legacy=False):
    if legacy:
        enc = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(2048)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())
            .build(PASSWORD.encode())
        )
    else:
        enc = serialization.BestAvailableEncryption(PASSWORD.encode())
    return pkcs12.serialize_key_and_certificates(b"sdk", key, leaf, chain, enc)


def _jwk_public_key(jwk):
    if jwk.kty in ("RSA", "RSA-HSM"):
        return rsa.RSAPublicNumbers(
            int.from_bytes(jwk.e, "big"), int.from_bytes(jwk.n, "big")
        ).public_key()
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[getattr(jwk.crv, "value", jwk.crv)]
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), curve
    ).public_key()


def _check_common(dv, kvcert, name, leaf):
    assert kvcert.name == name
    version = kvcert.properties.version
    assert HEX32.match(version)
    assert kvcert.id == f"{dv.vault_url}/certificates/{name}/{version}"
    assert bytes(kvcert.cer) == _der(leaf)
    assert kvcert.properties.x509_thumbprint == hashlib.sha1(_der(leaf)).digest()
    assert kvcert.secret_id == f"{dv.vault_url}/secrets/{name}/{version}"
    assert kvcert.key_id == f"{dv.vault_url}/keys/{name}/{version}"
    assert kvcert.properties.enabled is True
    return version


def _check_backing_key(key_client, name, version, leaf_key):
    k = key_client.get_key(name)
    assert k.properties.version == version
    assert k.properties.managed is True
    assert _same_public_key(_jwk_public_key(k.key), leaf_key.public_key())
    for private in ("d", "p", "q", "dp", "dq", "qi"):
        assert getattr(k.key, private) is None, private
    return k


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_import_pfx_with_password(dv, cert_client, secret_client, key_client, kind):
    name = unique(f"pfx-{kind.lower()}")
    if kind == "RSA":
        ca_key, ca = make_ca("RSA")
        leaf_key, leaf = make_leaf(ca_key, ca, "RSA", cn=f"{name}.sdk.test", sans=[f"{name}.sdk.test"])
        pfx = _pfx(leaf_key, leaf, [ca])  # AES-256-CBC / PBKDF2 (OpenSSL 3 default)
    else:
        ca_key, ca = make_ca("P-384")
        leaf_key, leaf = make_leaf(ca_key, ca, "P-256", cn=f"{name}.sdk.test", sans=[f"{name}.sdk.test"])
        pfx = _pfx(leaf_key, leaf, [ca], legacy=True)  # 3DES / SHA-1 (legacy Windows export)
    imported = cert_client.import_certificate(name, pfx, password=PASSWORD, tags={"src": "pfx"})
    version = _check_common(dv, imported, name, leaf)
    assert imported.properties.tags == {"src": "pfx"}

    got = cert_client.get_certificate(name)
    assert _check_common(dv, got, name, leaf) == version
    assert got.policy is not None
    assert got.policy.content_type == CertificateContentType.pkcs12
    assert got.policy.key_type in ((KeyType.rsa, KeyType.rsa_hsm) if kind == "RSA" else (KeyType.ec, KeyType.ec_hsm))

    # backing secret: base64 PFX without password, with the chain
    s = secret_client.get_secret(name)
    assert s.properties.version == version
    assert s.properties.content_type == "application/x-pkcs12"
    assert s.properties.managed is True
    assert s.properties.key_id == imported.key_id
    key, cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
    assert cert is not None and _der(cert) == _der(leaf)
    assert _same_public_key(key.public_key(), leaf_key.public_key())
    assert _der(ca) in [_der(c) for c in extra]

    _check_backing_key(key_client, name, version, leaf_key)


def test_import_pem_bundle(dv, cert_client, secret_client, key_client):
    name = unique("pem")
    ca_key, ca = make_ca("RSA")
    leaf_key, leaf = make_leaf(ca_key, ca, "RSA", cn="pem.sdk.test", sans=["pem.sdk.test", "alt.sdk.test"])
    bundle = key_pem(leaf_key) + cert_pem(leaf) + cert_pem(ca)
    policy = CertificatePolicy(content_type=CertificateContentType.pem)
    imported = cert_client.import_certificate(name, bundle, policy=policy)
    version = _check_common(dv, imported, name, leaf)

    pol = cert_client.get_certificate_policy(name)
    assert pol.content_type == CertificateContentType.pem

    s = secret_client.get_secret(name)
    assert s.properties.version == version
    assert s.properties.content_type == "application/x-pem-file"
    assert s.properties.managed is True
    text = s.value.encode()
    m = PEM_KEY.search(text)
    assert m, s.value[:200]
    key = serialization.load_pem_private_key(m.group(0), None)
    assert _same_public_key(key.public_key(), leaf_key.public_key())
    ders = [_der(c) for c in x509.load_pem_x509_certificates(text)]
    assert ders[0] == _der(leaf)
    assert _der(ca) in ders

    _check_backing_key(key_client, name, version, leaf_key)


def test_create_self_signed_default_policy(dv, cert_client, secret_client, key_client):
    name = unique("selfsigned")
    poller = cert_client.begin_create_certificate(name, CertificatePolicy.get_default(), _polling_interval=0.2)
    poller.wait(timeout=60)
    assert poller.done()
    created = cert_client.get_certificate(name)  # poller.result() is covered by test_create_poller_result
    assert created.name == name
    leaf = x509.load_der_x509_certificate(bytes(created.cer))
    _check_common(dv, created, name, leaf)
    assert leaf.subject.rfc4514_string() == "CN=DefaultPolicy"
    assert leaf.issuer == leaf.subject
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    assert leaf.public_key().key_size == 2048
    leaf.verify_directly_issued_by(leaf)

    op = cert_client.get_certificate_operation(name)
    assert op.status.lower() == "completed"
    assert op.issuer_name == "Self"

    pol = cert_client.get_certificate_policy(name)
    assert pol.issuer_name == "Self"
    assert pol.subject == "CN=DefaultPolicy"

    s = secret_client.get_secret(name)
    assert s.properties.content_type == "application/x-pkcs12"
    key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
    assert _der(cert) == _der(leaf)
    assert _same_public_key(key.public_key(), leaf.public_key())
    k = key_client.get_key(name)
    assert _same_public_key(_jwk_public_key(k.key), leaf.public_key())


def test_create_ec_pem_with_sans(dv, cert_client, secret_client):
    name = unique("ecpem")
    policy = CertificatePolicy(
        issuer_name="Self", subject="CN=ec.sdk.test", san_dns_names=["ec.sdk.test", "www.ec.sdk.test"],
        key_type=KeyType.ec, key_curve_name=KeyCurveName.p_256, content_type=CertificateContentType.pem,
        validity_in_months=6,
    )
    cert_client.begin_create_certificate(name, policy, _polling_interval=0.2).wait(timeout=60)
    created = cert_client.get_certificate(name)
    leaf = x509.load_der_x509_certificate(bytes(created.cer))
    assert leaf.subject.rfc4514_string() == "CN=ec.sdk.test"
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"ec.sdk.test", "www.ec.sdk.test"}
    s = secret_client.get_secret(name)
    assert s.properties.content_type == "application/x-pem-file"
    m = PEM_KEY.search(s.value.encode())
    assert m
    key = serialization.load_pem_private_key(m.group(0), None)
    assert _same_public_key(key.public_key(), pub)


def test_create_poller_result(dv, cert_client):
    """LROPoller only runs the polling method when the initial 202 body is not finished: if
    POST /create already says status=completed, poller.result() is None (azure/core/polling/_poller.py)."""
    name = unique("pollresult")
    poller = cert_client.begin_create_certificate(name, CertificatePolicy.get_default(), _polling_interval=0.2)
    created = poller.result(timeout=60)
    assert created is not None, "poller.result() is None: POST /certificates/{n}/create must answer status=inProgress"
    assert created.name == name
    assert created.cer


def test_certificate_versions(dv, cert_client):
    name = unique("certver")
    ca_key, ca = make_ca("RSA")
    k1, l1 = make_leaf(ca_key, ca, "RSA", cn="v1.sdk.test", sans=["v1.sdk.test"])
    k2, l2 = make_leaf(ca_key, ca, "RSA", cn="v2.sdk.test", sans=["v2.sdk.test"])
    c1 = cert_client.import_certificate(name, _pfx(k1, l1, [ca]), password=PASSWORD)
    c2 = cert_client.import_certificate(name, _pfx(k2, l2, [ca]), password=PASSWORD)
    assert c1.properties.version != c2.properties.version
    listed = list(cert_client.list_properties_of_certificate_versions(name))
    assert {p.version for p in listed} == {c1.properties.version, c2.properties.version}
    thumbs = {p.version: p.x509_thumbprint for p in listed}
    assert thumbs[c1.properties.version] == hashlib.sha1(_der(l1)).digest()
    assert thumbs[c2.properties.version] == hashlib.sha1(_der(l2)).digest()
    assert bytes(cert_client.get_certificate(name).cer) == _der(l2)
    assert bytes(cert_client.get_certificate_version(name, c1.properties.version).cer) == _der(l1)
    props = {p.name: p for p in cert_client.list_properties_of_certificates()}
    assert name in props
    assert props[name].x509_thumbprint == hashlib.sha1(_der(l2)).digest()


def test_missing_certificate_404(cert_client):
    with pytest.raises(ResourceNotFoundError) as e:
        cert_client.get_certificate(unique("nope"))
    assert e.value.error is not None and e.value.error.code == "CertificateNotFound"
