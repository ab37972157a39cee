"""Reconciling the config file into the store: the file is the source of truth for what it declares."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.documents import stable_id
from authz.passwords import verify_secret
from authz.reconcile import reconcile
from authz.store.sqlite import SqliteStore
from authz.syslog import SystemLog
from config import ScopegateConfig, parse_config

EXAMPLE = Path(__file__).parents[2] / "examples" / "orders.yaml"
ENV = {"SCOPEGATE_ADMIN_TOKEN": "a" * 32, "REPORTING_SECRET": "r" * 20, "WEB_SECRET": "w" * 20, "ALICE_PASSWORD": "pw-alice"}
NOW = 1_800_000_000.0


def config(mutate: Any = None) -> ScopegateConfig:
    doc = yaml.safe_load(EXAMPLE.read_text())
    if mutate is not None:
        mutate(doc)
    return parse_config(yaml.safe_dump(doc), "test.yaml", ENV)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteStore(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_first_start_writes_every_object_and_keys(store: SqliteStore) -> None:
    """Every declared server, app, user and group is stored with origin config, and each local server gets keys."""
    report = reconcile(store, config(), NOW)
    assert sorted(report.created) == sorted([("authorization_server", "orders"), ("app", "reporting"), ("app", "web"),
                                             ("user", "alice"), ("group", "engineering")])
    assert all(o.origin == "config" for o in store.list_objects("app"))
    statuses = sorted(k.status for k in store.list_signing_keys("orders"))
    assert statuses == ["ACTIVE", "NEXT"]


def test_secrets_are_hashed_and_never_in_documents(store: SqliteStore) -> None:
    """Client secrets and passwords reach the store only as scrypt hashes beside the document."""
    reconcile(store, config(), NOW)
    app = store.get_object("app", "reporting")
    user = store.get_object("user", "alice")
    assert app is not None and user is not None
    assert "clientSecret" not in app.document and "password" not in user.document
    assert verify_secret("r" * 20, app.secret_hash)
    assert verify_secret("pw-alice", user.secret_hash)
    assert "r" * 20 not in json.dumps(app.document)


def test_policies_and_rules_get_stable_ids(store: SqliteStore) -> None:
    """Config policies and rules without ids get ids derived from their names, the same on every start."""
    reconcile(store, config(), NOW)
    server = store.get_object("authorization_server", "orders")
    assert server is not None
    policy = server.document["policies"][0]
    assert policy["id"] == stable_id("00p", "orders", "Services")
    assert policy["rules"][0]["id"] == stable_id("0pr", "orders", "Services", "Read only")


def test_unchanged_config_writes_nothing(store: SqliteStore) -> None:
    """A second start with the same file changes nothing and revokes nothing."""
    reconcile(store, config(), NOW)
    seq = store.last_change_seq()
    report = reconcile(store, config(), NOW + 60)
    assert not report.changed
    assert store.last_change_seq() == seq


def test_changed_server_is_updated_and_revokes_its_tokens(store: SqliteStore) -> None:
    """A changed authorization server is rewritten, and a watermark revokes the tokens it issued before."""
    reconcile(store, config(), NOW)
    seq = store.last_change_seq()

    def longer(doc: dict[str, Any]) -> None:
        doc["authorizationServers"][0]["policies"][0]["rules"][0]["actions"]["token"]["accessTokenLifetimeMinutes"] = 45

    report = reconcile(store, config(longer), NOW + 60)
    assert report.updated == [("authorization_server", "orders")]
    watermarks = [c for c in store.changes_since(seq) if c.kind == "watermark"]
    assert [(w.data["scope"], w.data["key"]) for w in watermarks] == [("as", "orders")]


def test_api_change_to_config_object_is_overwritten_and_logged(store: SqliteStore) -> None:
    """A management-API change to a config-declared object is overwritten at the next reload, and the log says so."""
    reconcile(store, config(), NOW)
    app = store.get_object("app", "reporting")
    assert app is not None
    store.put_object("app", "reporting", {**app.document, "name": "Changed by API"}, "api")
    out = io.StringIO()
    report = reconcile(store, config(), NOW + 60, SystemLog(out))
    assert report.overwritten == [("app", "reporting")]
    restored = store.get_object("app", "reporting")
    assert restored is not None and restored.document["name"] == "Reporting" and restored.origin == "config"
    [event] = [e for e in events(out) if e["eventType"] == "app.oauth2.client.lifecycle.update"]
    assert "overwritten by the config file" in event["displayMessage"]
    assert event["target"][0]["changeDetails"]["from"]["name"] == "Changed by API"


def test_api_created_objects_are_left_alone(store: SqliteStore) -> None:
    """Objects created through the management API are not the file's to delete."""
    reconcile(store, config(), NOW)
    store.put_object("group", "api-group", {"id": "api-group", "name": "From the API"}, "api")
    reconcile(store, config(), NOW + 60)
    assert store.get_object("group", "api-group") is not None


def test_object_removed_from_file_is_deleted_and_revoked(store: SqliteStore) -> None:
    """An app the file no longer declares is deleted, and its tokens are revoked."""
    reconcile(store, config(), NOW)
    seq = store.last_change_seq()

    def drop_reporting(doc: dict[str, Any]) -> None:
        doc["apps"] = [a for a in doc["apps"] if a["clientId"] != "reporting"]
        doc["authorizationServers"][0]["policies"][0]["conditions"]["clients"]["include"] = ["ALL_CLIENTS"]

    report = reconcile(store, config(drop_reporting), NOW + 60)
    assert ("app", "reporting") in report.deleted
    assert store.get_object("app", "reporting") is None
    watermarks = [c.data for c in store.changes_since(seq) if c.kind == "watermark"]
    assert {"scope": "client", "key": "reporting"} in [{"scope": w["scope"], "key": w["key"]} for w in watermarks]


def test_deactivated_user_revokes_the_users_tokens(store: SqliteStore) -> None:
    """A user whose status the file changes away from ACTIVE gets a user watermark."""
    reconcile(store, config(), NOW)
    seq = store.last_change_seq()
    reconcile(store, config(lambda d: d["users"][0].update(status="DEPROVISIONED")), NOW + 60)
    watermarks = [c.data for c in store.changes_since(seq) if c.kind == "watermark"]
    assert [(w["scope"], w["key"]) for w in watermarks] == [("user", "alice")]


def test_changed_secret_is_rehashed(store: SqliteStore) -> None:
    """A new client secret in the file replaces the stored hash; the old secret stops working."""
    reconcile(store, config(), NOW)
    env = {**ENV, "REPORTING_SECRET": "n" * 20}
    doc = yaml.safe_load(EXAMPLE.read_text())
    reconcile(store, parse_config(yaml.safe_dump(doc), "t.yaml", env), NOW + 60)
    app = store.get_object("app", "reporting")
    assert app is not None
    assert verify_secret("n" * 20, app.secret_hash)
    assert not verify_secret("r" * 20, app.secret_hash)


def test_api_change_from_another_process_during_a_reload_is_overwritten(tmp_path: Path) -> None:
    """Another process's API change committed after a reload read the store but before it wrote is
    still seen (the reload re-reads under its transaction's lock): overwritten, logged and revoking."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    store, other = SqliteStore(url), SqliteStore(url)
    try:
        reconcile(store, config(), NOW)

        def change_through_the_other_process() -> None:
            app = other.get_object("app", "reporting")
            assert app is not None
            other.put_object("app", "reporting", {**app.document, "name": "Changed by API"}, "api")

        class Racing:
            """The store, with the other process's change landing just before the reload's transaction."""

            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

            def transaction(self) -> Any:
                change_through_the_other_process()
                return store.transaction()

        report = reconcile(Racing(), config(), NOW + 60)
        assert report.overwritten == [("app", "reporting")]
        restored = store.get_object("app", "reporting")
        assert restored is not None and restored.document["name"] == "Reporting" and restored.origin == "config"
        assert any(c.kind == "watermark" and c.data["key"] == "reporting" for c in store.changes_since(0))
    finally:
        store.close()
        other.close()


def test_user_removed_from_the_assigned_group_by_the_file_revokes_that_users_tokens_for_the_client(
        store: SqliteStore) -> None:
    """The brief's implicit revocation when a user loses access to a client (unassigned), through a config
    reload: a user+client watermark, as the management API writes. A user who keeps access another way (a
    direct assignment) keeps their tokens."""
    reconcile(store, config(), NOW)
    seq = store.last_change_seq()
    reconcile(store, config(lambda d: d["users"][0].update(groups=[])), NOW + 60)
    marks = [(c.data["scope"], c.data["key"]) for c in store.changes_since(seq) if c.kind == "watermark"]
    assert marks == [("user_client", "alice|web")]

    def direct(doc: dict[str, Any]) -> None:
        doc["users"][0]["groups"] = []
        doc["apps"][1]["assignments"]["users"] = ["alice"]

    reconcile(store, config(), NOW + 120)
    reconcile(store, config(lambda d: d["apps"][1]["assignments"].update(users=["alice"])), NOW + 180)
    seq = store.last_change_seq()
    reconcile(store, config(direct), NOW + 240)
    assert [c.data for c in store.changes_since(seq) if c.kind == "watermark" and c.data["scope"] == "user_client"] == []
