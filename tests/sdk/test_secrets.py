import datetime
import re

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from conftest import SEEDED_SECRET, SEEDED_VALUE, unique

HEX32 = re.compile(r"^[0-9a-f]{32}$")
UTC = datetime.timezone.utc


def _ts(days):
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    return now + datetime.timedelta(days=days)


def test_seeded_secret(secret_client, dv):
    s = secret_client.get_secret(SEEDED_SECRET)
    assert s.value == SEEDED_VALUE
    assert s.properties.content_type == "text/plain"
    assert s.properties.vault_url == dv.vault_url
    assert HEX32.match(s.properties.version)


def test_set_secret_with_properties(secret_client, dv):
    name = unique("props")
    nbf, exp = _ts(-1), _ts(30)
    s = secret_client.set_secret(
        name, "v4lue!", content_type="application/x-test", tags={"team": "sdk", "env": "ci"},
        enabled=True, not_before=nbf, expires_on=exp,
    )
    assert s.name == name
    assert s.value == "v4lue!"
    p = s.properties
    assert HEX32.match(p.version)
    assert s.id == f"{dv.vault_url}/secrets/{name}/{p.version}"
    assert p.vault_url == dv.vault_url
    assert p.content_type == "application/x-test"
    assert p.tags == {"team": "sdk", "env": "ci"}
    assert p.enabled is True
    assert p.not_before == nbf
    assert p.expires_on == exp
    assert p.created_on is not None and p.updated_on is not None
    assert abs((p.created_on - datetime.datetime.now(UTC)).total_seconds()) < 300
    assert p.managed in (None, False)

    got = secret_client.get_secret(name)
    assert got.value == "v4lue!"
    assert got.id == s.id
    assert got.properties.tags == {"team": "sdk", "env": "ci"}
    assert got.properties.expires_on == exp
    assert got.properties.not_before == nbf


def test_expired_secret_value_still_returned(secret_client):
    name = unique("expired")
    exp = _ts(-2)
    secret_client.set_secret(name, "old", expires_on=exp, not_before=_ts(-3))
    got = secret_client.get_secret(name)
    assert got.value == "old"
    assert got.properties.expires_on == exp


def test_get_latest_and_by_version(secret_client):
    name = unique("versions")
    v1 = secret_client.set_secret(name, "one")
    v2 = secret_client.set_secret(name, "two")
    assert v1.properties.version != v2.properties.version
    latest = secret_client.get_secret(name)
    assert latest.value == "two"
    assert latest.properties.version == v2.properties.version
    old = secret_client.get_secret(name, v1.properties.version)
    assert old.value == "one"
    assert old.properties.version == v1.properties.version
    assert old.id == v1.id


def test_list_secrets_paged(secret_client, dv):
    prefix = unique("page")
    names = {f"{prefix}-{i:02d}" for i in range(30)}
    for n in sorted(names):
        secret_client.set_secret(n, "x")
    # explicit page size -> several nextLink pages
    pages = list(secret_client.list_properties_of_secrets(max_page_size=7).by_page())
    sizes = [len(list(p)) for p in pages]  # consume each page
    assert len(pages) >= 5, sizes
    assert all(s <= 7 for s in sizes), sizes
    listed = [p for p in secret_client.list_properties_of_secrets(max_page_size=7)]
    listed_names = [p.name for p in listed]
    assert names <= set(listed_names)
    assert len(listed_names) == len(set(listed_names)), "duplicates across pages"
    for p in listed:
        if p.name in names:
            assert p.id == f"{dv.vault_url}/secrets/{p.name}"
            assert p.enabled is True
    # default page size (25): > 25 secrets exist, so the SDK has to follow nextLink
    default_pages = [len(list(p)) for p in secret_client.list_properties_of_secrets().by_page()]
    assert len(default_pages) >= 2, default_pages
    assert all(s <= 25 for s in default_pages), default_pages
    assert sum(default_pages) == len(listed_names)


def test_list_secret_versions(secret_client):
    name = unique("listver")
    versions = [secret_client.set_secret(name, f"v{i}").properties.version for i in range(3)]
    listed = list(secret_client.list_properties_of_secret_versions(name))
    assert sorted(p.version for p in listed) == sorted(versions)
    assert all(p.name == name for p in listed)
    assert all(not hasattr(p, "value") for p in listed)


def test_update_properties_disable_then_403(secret_client):
    name = unique("disable")
    s = secret_client.set_secret(name, "val", content_type="a/b")
    updated = secret_client.update_secret_properties(
        name, s.properties.version, enabled=False, tags={"state": "off"}
    )
    assert updated.enabled is False
    assert updated.tags == {"state": "off"}
    assert updated.version == s.properties.version
    assert updated.content_type == "a/b"
    with pytest.raises(HttpResponseError) as e:
        secret_client.get_secret(name, s.properties.version)
    assert e.value.status_code == 403
    assert e.value.error is not None and e.value.error.code == "Forbidden", e.value.response.text()
    assert "SecretDisabled" in e.value.response.text()
    # latest (no version) is the disabled one too
    with pytest.raises(HttpResponseError) as e2:
        secret_client.get_secret(name)
    assert e2.value.status_code == 403
    # listing still shows it, disabled
    [v] = list(secret_client.list_properties_of_secret_versions(name))
    assert v.enabled is False
    # re-enable via PATCH without version (latest)
    again = secret_client.update_secret_properties(name, enabled=True)
    assert again.enabled is True
    assert secret_client.get_secret(name).value == "val"


def test_delete_get_deleted_recover(secret_client):
    name = unique("recover")
    s = secret_client.set_secret(name, "keep-me")
    poller = secret_client.begin_delete_secret(name, _polling_interval=0.2)
    deleted = poller.result()
    poller.wait(timeout=30)
    assert poller.done()
    assert deleted.name == name
    assert deleted.recovery_id is not None
    assert deleted.recovery_id.endswith(f"/deletedsecrets/{name}")
    assert deleted.deleted_date is not None
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_secret(name)
    got = secret_client.get_deleted_secret(name)
    assert got.name == name
    assert got.properties.version == s.properties.version
    assert got.scheduled_purge_date is None or got.scheduled_purge_date > got.deleted_date
    assert name in {d.name for d in secret_client.list_deleted_secrets()}
    rp = secret_client.begin_recover_deleted_secret(name, _polling_interval=0.2)
    rp.wait(timeout=30)
    assert rp.done()
    assert rp.result().name == name
    back = secret_client.get_secret(name)
    assert back.value == "keep-me"
    assert back.properties.version == s.properties.version
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_deleted_secret(name)


def test_delete_and_purge(secret_client):
    name = unique("purge")
    secret_client.set_secret(name, "gone")
    secret_client.begin_delete_secret(name, _polling_interval=0.2).wait(timeout=30)
    secret_client.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_secret(name)
    # the name is free again
    assert secret_client.set_secret(name, "new").value == "new"


def test_missing_secret_404(secret_client):
    with pytest.raises(ResourceNotFoundError) as e:
        secret_client.get_secret(unique("nope"))
    assert e.value.status_code == 404
    assert e.value.error is not None and e.value.error.code == "SecretNotFound"


@pytest.mark.parametrize("api_version", ["7.0", "7.4", "7.6", "2025-07-01"])
def test_older_api_versions(dv, credential, api_version):
    from azure.keyvault.secrets import SecretClient

    from conftest import client_kwargs

    client = SecretClient(dv.vault_url, credential, api_version=api_version, **client_kwargs(dv))
    assert client.get_secret(SEEDED_SECRET).value == SEEDED_VALUE
    name = unique("apiver")
    assert client.set_secret(name, api_version).value == api_version
    assert name in {p.name for p in client.list_properties_of_secrets()}
