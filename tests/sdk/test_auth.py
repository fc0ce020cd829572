import base64
import json

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient

from conftest import (
    RESTRICTED,
    RESTRICTED_SECRET,
    SEEDED_SECRET,
    SEEDED_VALUE,
    SECRET_SP,
    TENANT,
    certificate_credential,
    client_kwargs,
    secret_credential,
    unique,
)


def _b64json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_ready_json(dv):
    assert dv.tenant == TENANT
    assert dv.ready["vaults"]["sdkvault"] == dv.vault_url
    assert dv.ready["url"] == dv.authority
    assert dv.ready["listen"] == f"127.0.0.1:{dv.port}"
    assert dv.ready["pid"] == dv.proc.pid


def test_openid_configuration_and_jwks(dv):
    r = dv.http.get(f"{dv.authority}/{dv.tenant}/v2.0/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200, r.text
    cfg = r.json()
    assert cfg["token_endpoint"] == f"{dv.authority}/{dv.tenant}/oauth2/v2.0/token"
    assert cfg["authorization_endpoint"].startswith(f"{dv.authority}/{dv.tenant}/")
    jwks = dv.http.get(cfg.get("jwks_uri", f"{dv.authority}/{dv.tenant}/discovery/v2.0/keys"), timeout=10)
    assert jwks.status_code == 200
    assert jwks.json()["keys"], jwks.text


def test_client_secret_token_is_es256_jwt(dv, credential):
    scope = f"{dv.authority}/.default"
    tok = credential.get_token(scope)
    header = _b64json(tok.token.split(".")[0])
    assert header["alg"] == "ES256"
    jwks = dv.http.get(f"{dv.authority}/{dv.tenant}/discovery/v2.0/keys", timeout=10).json()
    keys = {k.get("kid"): k for k in jwks["keys"]}
    jwk = keys.get(header.get("kid")) or jwks["keys"][0]
    claims = jwt.decode(
        tok.token, jwt.PyJWK(jwk, algorithm="ES256").key, algorithms=["ES256"],
        options={"verify_aud": False},
    )
    aud = claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0]
    assert aud.startswith(dv.authority), aud
    assert claims.get("tid") in (None, dv.tenant)
    assert claims["exp"] > claims.get("iat", claims.get("nbf", 0))
    assert tok.expires_on == pytest.approx(claims["exp"], abs=120)


def test_certificate_credential(dv):
    cred = certificate_credential(dv, dv.root / "sp.pem")
    client = SecretClient(dv.vault_url, cred, **client_kwargs(dv))
    assert client.get_secret(SEEDED_SECRET).value == SEEDED_VALUE
    name = unique("by-cert-sp")
    assert client.set_secret(name, "x").value == "x"


def test_unregistered_certificate_rejected(dv):
    cred = certificate_credential(dv, dv.root / "rogue.pem")
    client = SecretClient(dv.vault_url, cred, **client_kwargs(dv))
    with pytest.raises(ClientAuthenticationError):
        client.get_secret(SEEDED_SECRET)


def test_wrong_client_secret(dv):
    cred = secret_credential(dv, SECRET_SP, "not-the-secret")
    client = SecretClient(dv.vault_url, cred, **client_kwargs(dv))
    with pytest.raises(ClientAuthenticationError) as e:
        client.get_secret(SEEDED_SECRET)
    assert "AADSTS" in str(e.value), str(e.value)


def test_unknown_client_id(dv):
    cred = secret_credential(dv, "no-such-client", "whatever")
    with pytest.raises(ClientAuthenticationError):
        cred.get_token(f"{dv.authority}/.default")


def test_forbidden_for_restricted_identity(dv):
    cred = secret_credential(dv, RESTRICTED, RESTRICTED_SECRET)
    secrets = SecretClient(dv.vault_url, cred, **client_kwargs(dv))
    # list is allowed ...
    names = {p.name for p in secrets.list_properties_of_secrets()}
    assert SEEDED_SECRET in names
    # ... get is not
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret(SEEDED_SECRET)
    assert e.value.status_code == 403
    assert e.value.error is not None and e.value.error.code == "Forbidden"
    with pytest.raises(HttpResponseError) as e:
        secrets.set_secret(unique("denied"), "x")
    assert e.value.status_code == 403
    keys = KeyClient(dv.vault_url, cred, **client_kwargs(dv))
    with pytest.raises(HttpResponseError) as e:
        keys.create_ec_key(unique("denied"), curve="P-256")
    assert e.value.status_code == 403
    certs = CertificateClient(dv.vault_url, cred, **client_kwargs(dv))
    with pytest.raises(HttpResponseError) as e:
        list(certs.list_properties_of_certificates())
    assert e.value.status_code == 403


def test_missing_objects_404(secret_client, key_client, cert_client):
    for call in (
        lambda: secret_client.get_secret(unique("missing")),
        lambda: secret_client.get_secret(SEEDED_SECRET, "0" * 32),
        lambda: key_client.get_key(unique("missing")),
        lambda: cert_client.get_certificate(unique("missing")),
        lambda: secret_client.get_deleted_secret(unique("missing")),
    ):
        with pytest.raises(ResourceNotFoundError):
            call()


def test_challenge_shape_on_subdomain_host(dv):
    r = dv.http.get(f"{dv.vault_url}/secrets/{SEEDED_SECRET}?api-version=7.6", timeout=10)
    assert r.status_code == 401
    h = r.headers["WWW-Authenticate"]
    assert h.startswith("Bearer ")
    assert f'authorization="{dv.authority}/{dv.tenant}"' in h, h
    assert f'resource="{dv.authority}"' in h, h
    assert "Retry-After" not in r.headers  # would make azure-core retry the 401


def test_challenge_on_bodiless_put_is_401_not_400(dv):
    # What ChallengeAuthPolicy sends first: the PUT's headers, Content-Length: 0, no body.
    r = dv.http.put(
        f"{dv.vault_url}/secrets/{unique('bodiless')}?api-version=2026-04-01",
        headers={"Content-Type": "application/json", "Content-Length": "0"}, data=b"", timeout=10,
    )
    assert r.status_code == 401, (r.status_code, r.text)
    assert "WWW-Authenticate" in r.headers


def test_sdk_first_request_with_body_after_cache_clear(dv, credential):
    from azure.keyvault.secrets._shared import HttpChallengeCache

    HttpChallengeCache.clear()
    client = SecretClient(dv.vault_url, credential, **client_kwargs(dv))
    name = unique("firstput")
    s = client.set_secret(name, "body-survives-challenge", content_type="text/plain")
    assert s.value == "body-survives-challenge"
    assert client.get_secret(name).properties.content_type == "text/plain"


def test_ip_host_without_resource_verification(dv, credential):
    client = SecretClient(dv.ip_url, credential, verify_challenge_resource=False, **client_kwargs(dv))
    s = client.get_secret(SEEDED_SECRET)
    assert s.value == SEEDED_VALUE
    assert s.id.startswith(f"{dv.ip_url}/secrets/{SEEDED_SECRET}/")  # ids built from Host
    r = dv.http.get(f"{dv.ip_url}/secrets?api-version=7.6", timeout=10)
    assert 'resource="https://vault.azure.net"' in r.headers.get("WWW-Authenticate", ""), r.headers


def test_localhost_default_resource_verification_rejects(dv, credential):
    # https://localhost:PORT advertises resource https://localhost:PORT (kvbridge's own client
    # accepts an equal host), but the Python SDK wants a strict subdomain ("x.localhost:PORT")
    # and refuses to send a token unless verify_challenge_resource=False.
    r = dv.http.get(f"{dv.authority}/secrets?api-version=7.6", timeout=10)
    assert f'resource="{dv.authority}"' in r.headers.get("WWW-Authenticate", ""), r.headers
    client = SecretClient(dv.authority, credential, **client_kwargs(dv))
    with pytest.raises(ValueError, match="does not match"):
        client.get_secret(SEEDED_SECRET)


def test_invalid_token_401(dv):
    r = dv.http.get(
        f"{dv.vault_url}/secrets/{SEEDED_SECRET}?api-version=7.6",
        headers={"Authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJ4In0.AAAA"}, timeout=10,
    )
    assert r.status_code == 401


def test_raw_token_endpoint_error_shape(dv):
    r = requests.post(
        f"{dv.authority}/{dv.tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": SECRET_SP, "client_secret": "wrong",
              "scope": f"{dv.authority}/.default"},
        verify=dv.ca, timeout=10,
    )
    assert r.status_code in (400, 401)
    body = r.json()
    assert body["error"] == "invalid_client"
    assert "AADSTS7000215" in body["error_description"]
    assert isinstance(body.get("error_codes"), list)
