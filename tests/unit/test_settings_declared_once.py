"""Each setting is declared once (``SETTINGS`` in each service's config): the config dataclasses, the
flags, the restart-only list and docs/configuration.md's tables all agree with that declaration.

``python -m tests.unit.test_settings_declared_once`` (``make config-docs``) rewrites the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest

from expert_svc import config as expert_config
from router_svc import config as router_config
from service_base.settings import between_markers, replace_between_markers

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
SERVICES = {"router": (router_config, router_config.RouterConfig, {"experts", "expert_names"}),
            "expert": (expert_config, expert_config.ExpertConfig, set())}


def all_tables() -> dict[str, str]:
    return {**router_config.docs_tables(), **expert_config.docs_tables()}


@pytest.mark.parametrize("name", sorted(all_tables()))
def test_the_docs_tables_are_the_declared_settings(name: str) -> None:
    assert between_markers(DOC.read_text(), name) == all_tables()[name], (
        f"docs/configuration.md's {name} table is out of date: run `make config-docs`")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_field_is_declared_once_with_the_field_default(service: str) -> None:
    module, cls, not_settings = SERVICES[service]
    names = [setting.name for setting in module.SETTINGS]
    assert len(names) == len(set(names))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) - not_settings == set(names)
    for setting in module.SETTINGS:
        default = fields[setting.name].default
        if default is dataclasses.MISSING:  # required: the expert's name
            assert setting.required, setting.name
        elif setting.default is not None:
            assert default == setting.default, setting.name
        else:
            assert default is None, setting.name


def test_every_router_flag_comes_from_the_table() -> None:
    parser = argparse.ArgumentParser()
    router_config.add_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}
    declared = {s.flag for s in router_config.SETTINGS if s.flag is not None}
    assert flags == declared | {"--config", "--expert"}
    keys = {s.key for s in router_config.SETTINGS if s.key is not None}
    with pytest.raises(router_config.ConfigError) as info:
        router_config.settings_from_mapping({"nope": 1})
    assert all(key in str(info.value) for key in keys | {"experts"})


def test_reload_keeps_exactly_the_restart_only_settings() -> None:
    from router_svc.server import FIXED_AT_START

    assert set(FIXED_AT_START) == {s.name for s in router_config.SETTINGS if s.restart}
    assert {"listen", "workers", "tls_cert", "relay"} <= set(FIXED_AT_START)
    assert "min_confidence" not in FIXED_AT_START


def test_a_flag_and_a_file_value_get_the_same_check(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    router_config.add_arguments(parser)
    with pytest.raises(router_config.ConfigError, match=r"queue_timeout_s: expected a number in \[0, 3600\]"):
        router_config.from_sources(parser.parse_args(["--queue-timeout-s", "4000"]))
    path = tmp_path / "router.yaml"
    path.write_text("queue_timeout_s: 4000\n")
    with pytest.raises(router_config.ConfigError, match=r"queue_timeout_s: expected a number in \[0, 3600\]"):
        router_config.from_sources(parser.parse_args(["--config", str(path)]))


def write_docs() -> None:
    text = DOC.read_text()
    for name, body in all_tables().items():
        text = replace_between_markers(text, name, body)
    DOC.write_text(text)


if __name__ == "__main__":
    write_docs()
    sys.exit(0)


def test_one_declaration_gives_the_check_the_flag_and_the_docs_their_words() -> None:
    from service_base.settings import FLOAT, INT, Setting, accepts, add_flags, expected

    workers = Setting("workers", "processes", kind=INT, default=1, low=1, flag="--workers", metavar="N")
    share = Setting("share", "a share", kind=FLOAT, default=0.5, low=0.0, low_open=True, high=1.0)
    rate = Setting("rate", "a rate", kind=FLOAT, default=1.0, low=0.0, low_open=True)
    assert [expected(workers, v) for v in (1, 0, 1.5, True)] == [
        None, "an integer >= 1", "an integer >= 1", "an integer >= 1"]
    assert [expected(share, v) for v in (1.0, 0.0, float("nan"))] == [None, "a number in (0, 1]", "a number in (0, 1]"]
    assert [expected(rate, v) for v in (2, 0, float("inf"))] == [None, "> 0", "a finite number"]
    assert (accepts(workers), accepts(share)) == ("an integer >= 1", "a number in (0, 1]")
    parser = argparse.ArgumentParser()
    add_flags(parser, (workers,))
    assert parser.parse_args([]).workers is None  # a file's value shows through
    assert parser.parse_args(["--workers", "3"]).workers == 3
    assert "processes (default: 1)" in " ".join(parser.format_help().split())
