"""The container demo config (examples/container/demo.yaml, shipped in the image as /etc/scopegate/demo.yaml)
is the built-in demo with listen addresses a container can be reached on, each settable from the environment."""

from __future__ import annotations

from pathlib import Path

from config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "container" / "demo.yaml"


def test_container_demo_listens_on_every_interface_and_keeps_state_in_the_volume() -> None:
    """Defaults: 0.0.0.0 on the three ports and the SQLite file in the image's state directory."""
    cfg = load_config(DEMO, env={})
    assert (cfg.listen.proxy, cfg.listen.core, cfg.listen.ops) == ("0.0.0.0:8080", "0.0.0.0:8081", "0.0.0.0:9090")
    assert cfg.store == "sqlite:////var/lib/scopegate/state.db"
    assert cfg.upstream.url == "builtin:echo"


def test_container_demo_addresses_come_from_the_environment() -> None:
    """A pod or a smoke test moves the listeners, the issuer and the upstream without editing the file."""
    env = {"SCOPEGATE_PROXY_LISTEN": "0.0.0.0:18080", "SCOPEGATE_CORE_LISTEN": "127.0.0.1:18081",
           "SCOPEGATE_OPS_LISTEN": "127.0.0.1:19090", "SCOPEGATE_ISSUER": "http://127.0.0.1:18081",
           "SCOPEGATE_UPSTREAM": "http://127.0.0.1:9000", "SCOPEGATE_STORE": "sqlite:///:memory:"}
    cfg = load_config(DEMO, env=env)
    assert (cfg.listen.proxy, cfg.listen.core, cfg.listen.ops) == ("0.0.0.0:18080", "127.0.0.1:18081",
                                                                  "127.0.0.1:19090")
    assert (cfg.issuer, cfg.upstream.url, cfg.store) == ("http://127.0.0.1:18081", "http://127.0.0.1:9000",
                                                         "sqlite:///:memory:")


def test_container_demo_is_the_builtin_demo() -> None:
    """Routes, servers, apps and users are the built-in demo's, word for word, so the README quick start holds."""
    builtin = (ROOT / "config" / "default.yaml").read_text()
    demo = DEMO.read_text()
    assert demo[demo.index("\nroutes:"):] == builtin[builtin.index("\nroutes:"):]
