import re

import pytest
from azure.core.exceptions import ResourceNotFoundError
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import unique

HEX32 = re.compile(r"^[0-9a-f]{32}$")
PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "k", "t")
CURVES = {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48), "P-521": (ec.SECP521R1(), 66)}


def _no_private_parts(key):
    for f in PRIVATE:
        assert getattr(key.key, f) is None, f"private JWK field {f} returned"


@pytest.mark.parametrize("size", [2048, 3072])
def test_create_rsa_key(dv, key_client, size):
    name = unique(f"rsa{size}")
    k = key_client.create_rsa_key(name, size=size)
    assert k.name == name
    assert k.key_type == "RSA"
    assert HEX32.match(k.properties.version)
    assert k.id == f"{dv.vault_url}/keys/{name}/{k.properties.version}"
    assert k.key.kid == k.id
    assert k.properties.enabled is True
    assert len(k.key.n) == size // 8
    pub = rsa.RSAPublicNumbers(int.from_bytes(k.key.e, "big"), int.from_bytes(k.key.n, "big")).public_key()
    assert pub.key_size == size
    assert pub.public_numbers().e == 65537
    _no_private_parts(k)
    assert k.key_operations  # Key Vault always reports the permitted ops
    got = key_client.get_key(name)
    assert got.id == k.id
    assert got.key.n == k.key.n
    _no_private_parts(got)


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_create_ec_key(dv, key_client, curve):
    name = unique("ec" + curve.replace("-", "").lower())
    k = key_client.create_ec_key(name, curve=curve)
    assert k.key_type == "EC"
    assert k.key.crv == curve
    assert k.id == f"{dv.vault_url}/keys/{name}/{k.properties.version}"
    crv, size = CURVES[curve]
    assert len(k.key.x) == size and len(k.key.y) == size
    # constructing the public key checks that the point is on the curve
    pub = ec.EllipticCurvePublicNumbers(int.from_bytes(k.key.x, "big"), int.from_bytes(k.key.y, "big"), crv).public_key()
    assert pub.curve.name == crv.name
    _no_private_parts(k)
    got = key_client.get_key(name, k.properties.version)
    assert (got.key.x, got.key.y) == (k.key.x, k.key.y)


def test_key_versions_latest_and_by_version(dv, key_client):
    name = unique("keyver")
    k1 = key_client.create_rsa_key(name, size=2048)
    k2 = key_client.create_rsa_key(name, size=2048)
    assert k1.properties.version != k2.properties.version
    assert k1.key.n != k2.key.n
    latest = key_client.get_key(name)
    assert latest.properties.version == k2.properties.version
    assert latest.key.n == k2.key.n
    old = key_client.get_key(name, k1.properties.version)
    assert old.key.n == k1.key.n
    assert old.id == k1.id
    versions = list(key_client.list_properties_of_key_versions(name))
    assert {v.version for v in versions} == {k1.properties.version, k2.properties.version}
    assert all(v.name == name for v in versions)
    listed = {p.name: p for p in key_client.list_properties_of_keys()}
    assert name in listed
    assert listed[name].id == f"{dv.vault_url}/keys/{name}"


def test_missing_key_404(key_client):
    with pytest.raises(ResourceNotFoundError) as e:
        key_client.get_key(unique("nope"))
    assert e.value.error is not None and e.value.error.code == "KeyNotFound"
