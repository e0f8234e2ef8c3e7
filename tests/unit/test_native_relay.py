"""The choice of relay: the flag and YAML key, and the fallback where the native relay is not built."""
from __future__ import annotations

import argparse
import logging

import pytest

from router_svc import config, native_relay


def from_flags(*argv: str) -> config.RouterConfig:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_sources(parser.parse_args(list(argv)))


def test_relay_flag_and_key() -> None:
    assert from_flags().relay == "native"
    assert from_flags("--relay", "python", "--relay-threads", "3").relay_threads == 3
    assert from_flags("--relay", "python").relay == "python"
    assert config.settings_from_mapping({"relay": "python", "relay_threads": 2}) == {
        "relay": "python", "relay_threads": 2}


@pytest.mark.parametrize(("fields", "message"), [
    ({"relay": "rust"}, "relay: expected one of native, python, got 'rust'"),
    ({"relay_threads": -1}, "relay_threads: expected an integer >= 0"),
])
def test_bad_relay_settings_are_named(fields, message) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.RouterConfig(experts=config.local_stack_experts(), **fields)


def test_native_falls_back_to_python_once_where_not_built(monkeypatch, caplog) -> None:
    monkeypatch.setattr(native_relay, "_relay", None)
    monkeypatch.setattr(native_relay, "_said_unavailable", False)
    monkeypatch.setattr(native_relay, "UNAVAILABLE_REASON", "the native relay is not built (test)")
    caplog.set_level(logging.WARNING, logger="router_svc")
    assert native_relay.choose_relay("native") == "python"
    assert native_relay.choose_relay("native") == "python"
    assert native_relay.choose_relay("python") == "python"
    warnings = [r for r in caplog.records if "not built" in r.getMessage()]
    assert len(warnings) == 1 and "using the Python relay" in warnings[0].getMessage()
    with pytest.raises(RuntimeError, match="not built"):
        native_relay.NativeRelay(handler=None)


def test_native_is_kept_where_built() -> None:
    if not native_relay.available():
        pytest.skip(native_relay.UNAVAILABLE_REASON)
    assert native_relay.choose_relay("native") == "native"


def test_health_only_channels_ping_at_the_servers_default_allowance() -> None:
    """Under the native relay the grpcio channels carry only the health Watch, which sends no data for
    minutes: pings more often than every 5 minutes would draw GOAWAY too_many_pings from a server
    with gRPC's default policy (seen against the experts after 3 minutes)."""
    from router_svc.upstream import HEALTH_ONLY_KEEPALIVE_MS, KEEPALIVE_MS, UpstreamSettings

    python = UpstreamSettings.from_config(config.RouterConfig(experts=config.local_stack_experts(), relay="python"))
    assert python.keepalive_ms == KEEPALIVE_MS
    native = UpstreamSettings.from_config(config.RouterConfig(experts=config.local_stack_experts()))
    expected = HEALTH_ONLY_KEEPALIVE_MS if native_relay.available() else KEEPALIVE_MS
    assert native.keepalive_ms == expected and HEALTH_ONLY_KEEPALIVE_MS >= 300_000
