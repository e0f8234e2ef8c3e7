"""Router configuration: flags, YAML file, precedence and error messages that name the bad key."""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from router_svc import config
from router_svc.config import ConfigError, RouterConfig, UpstreamExpert


def parse(*argv: str) -> RouterConfig:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_sources(parser.parse_args(list(argv)))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "router.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_no_flags_means_the_local_stack() -> None:
    cfg = parse()
    assert cfg.listen == f"127.0.0.1:{config.LOCAL_ROUTER_PORT}"
    assert cfg.expert_names == ("code", "math", "science", "medicine", "law", "general")
    assert cfg.experts[1] == UpstreamExpert("math", (f"127.0.0.1:{config.LOCAL_EXPERT_PORTS['math']}",))
    assert cfg.fallback == "general"


def test_expert_flags_with_replicas() -> None:
    cfg = parse("--expert", "math=10.0.0.1:1,10.0.0.2:2", "--expert", "general=h:3",
                "--min-confidence", "0.7")
    assert cfg.experts == (UpstreamExpert("math", ("10.0.0.1:1", "10.0.0.2:2")),
                           UpstreamExpert("general", ("h:3",)))
    assert cfg.min_confidence == pytest.approx(0.7)


@pytest.mark.parametrize(("flag", "message"), [
    ("math", "NAME=HOST:PORT"),
    ("math=", "at least one HOST:PORT"),
    ("math=localhost", "HOST:PORT"),
    ("math=localhost:99999", "port in 1..65535"),
])
def test_bad_expert_flag_is_explained(flag: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse("--expert", flag, "--fallback", "math")


def test_yaml_file_and_flags_override_it(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listen: 0.0.0.0:6000
        classifier: artifacts/clf
        min_confidence: 0.25
        fallback: chat
        experts:
          math: 127.0.0.1:7001
          chat: [127.0.0.1:7002, 127.0.0.1:7003]
          code: {addresses: [127.0.0.1:7004]}
    """)
    cfg = parse("--config", path)
    assert cfg.listen == "0.0.0.0:6000"
    assert cfg.classifier_dir == str(tmp_path / "artifacts" / "clf")
    assert cfg.expert_names == ("math", "chat", "code")
    assert cfg.experts[1].addresses == ("127.0.0.1:7002", "127.0.0.1:7003")
    assert cfg.min_confidence == pytest.approx(0.25)

    overridden = parse("--config", path, "--listen", "127.0.0.1:0", "--min-confidence", "0.9",
                       "--expert", "chat=127.0.0.1:8000")
    assert (overridden.listen, overridden.min_confidence) == ("127.0.0.1:0", pytest.approx(0.9))
    assert overridden.expert_names == ("chat",)


@pytest.mark.parametrize(("body", "message"), [
    ("experts: {general: 'h:1'}\nmin_confidnce: 0.3\n", "unknown key 'min_confidnce'"),
    ("experts: {general: 'h:1'}\nmin_confidence: high\n", "min_confidence: expected a number"),
    ("experts: {general: 'h:1'}\nmin_confidence: 1.5\n", r"min_confidence: expected a number in \[0, 1\]"),
    ("experts: {general: 'h:1'}\nmax_prompt_bytes: 1.5\n", "max_prompt_bytes: expected an integer"),
    ("experts: {general: 'nope'}\n", "experts.general: expected HOST:PORT"),
    ("experts: {general: []}\n", "experts.general: expected HOST:PORT or a non-empty list"),
    ("experts: {general: {adresses: ['h:1']}}\n", "experts.general: unknown key"),
    ("experts: {math: 'h:1'}\n", "fallback: expert 'general' is not configured"),
    ("experts: [h:1]\n", "experts: expected a non-empty mapping"),
    ("- just a list\n", "top level must be a mapping"),
    ("experts: {general: 'h:1'\n", "not valid YAML"),
])
def test_bad_file_names_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match=message):
        parse("--config", path)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "experts: {general: 'h:1'}\nlisten: 5\n")
    with pytest.raises(ConfigError, match=f"config file {path}: listen: expected a non-empty string"):
        parse("--config", path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file /nonexistent.yaml"):
        parse("--config", "/nonexistent.yaml")


def test_config_is_frozen_and_validated_on_construction() -> None:
    cfg = RouterConfig(experts=(UpstreamExpert("general", ("h:1",)),))
    with pytest.raises(AttributeError):
        cfg.listen = "x"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="duplicate expert name"):
        RouterConfig(experts=(UpstreamExpert("general", ("h:1",)), UpstreamExpert("general", ("h:2",))))
    with pytest.raises(ConfigError, match="listen"):
        cfg.with_overrides(listen="nowhere")
    with pytest.raises(ConfigError, match="max_prompt_bytes"):
        cfg.with_overrides(max_prompt_bytes=10 << 20)


def test_dns_experts_from_flags_and_yaml(tmp_path: Path) -> None:
    cfg = parse("--expert", "math=dns:///math.experts.svc:50061", "--expert", "general=h:1")
    assert cfg.experts[0] == UpstreamExpert("math", dns="math.experts.svc:50061")
    assert cfg.experts[0].describe() == "dns:///math.experts.svc:50061"
    path = write(tmp_path, """
        experts:
          math: {dns: math.experts.svc:50061}
          code: dns:///code.experts.svc:50061
          general: [h:1]
        max_in_flight: 10
        max_in_flight_per_expert: 2
        queue_size: 4
        queue_timeout_s: 0.5
        failover_margin: 0.2
        eject_after: 5
        metrics_listen: 0.0.0.0:9100
        log_format: json
        workers: 3
    """)
    cfg = parse("--config", path, "--queue-size", "8")
    assert [e.dns for e in cfg.experts] == ["math.experts.svc:50061", "code.experts.svc:50061", None]
    assert (cfg.max_in_flight, cfg.max_in_flight_per_expert, cfg.queue_size, cfg.eject_after) == (10, 2, 8, 5)
    assert (cfg.metrics_listen, cfg.log_format, cfg.workers) == ("0.0.0.0:9100", "json", 3)
    assert parse("--config", path, "--workers", "1").workers == 1
    assert parse().workers == config.default_workers()


@pytest.mark.parametrize(("body", "message"), [
    ("experts: {general: {dns: 'nope'}}\n", "experts.general.dns: expected HOST:PORT"),
    ("experts: {general: {dns: 'h:1', addresses: ['h:2']}}\n", "experts.general: set either addresses or dns"),
    ("experts: {general: 'h:1'}\nqueue_size: -1\n", "queue_size: expected an integer >= 0"),
    ("experts: {general: 'h:1'}\nlog_format: xml\n", "log_format: expected one of text, json"),
    ("experts: {general: 'h:1'}\nmetrics_listen: 9100\n", "metrics_listen: expected a non-empty string"),
    ("experts: {general: 'h:1'}\neject_base_s: 5\neject_max_s: 1\n", "eject_max_s: expected a number in"),
    ("experts: {general: 'h:1'}\nlog_prompts: 'yes'\n", "log_prompts: expected true or false"),
    ("experts: {general: 'h:1'}\nmax_ejected_percent: 101\n",
     r"max_ejected_percent: expected an integer in \[0, 100\]"),
    ("experts: {general: 'h:1'}\nmax_ejected_percent: 0.5\n", "max_ejected_percent: expected an integer"),
    ("experts: {general: 'h:1'}\nhttp_listen: 8000\n", "http_listen: expected a non-empty string"),
    ("experts: {general: 'h:1'}\nhttp_listen: 'localhost'\n", "http_listen: expected HOST:PORT"),
])
def test_bad_new_keys_are_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse("--config", write(tmp_path, body))


def test_max_ejected_percent_from_flag_and_yaml(tmp_path: Path) -> None:
    assert parse().max_ejected_percent == 50
    path = write(tmp_path, """
        experts: {general: 'h:1'}
        max_ejected_percent: 30
    """)
    assert parse("--config", path).max_ejected_percent == 30
    assert parse("--config", path, "--max-ejected-percent", "0").max_ejected_percent == 0
    with pytest.raises(ConfigError, match="max_ejected_percent"):
        parse("--max-ejected-percent", "-1")


def test_http_listen_from_flag_and_yaml(tmp_path: Path) -> None:
    assert parse().http_listen is None  # off unless asked for
    path = write(tmp_path, """
        experts: {general: 'h:1'}
        http_listen: 0.0.0.0:8080
    """)
    assert parse("--config", path).http_listen == "0.0.0.0:8080"
    assert parse("--config", path, "--http-listen", "127.0.0.1:0").http_listen == "127.0.0.1:0"


def test_otlp_endpoint_from_flag_and_yaml(tmp_path: Path) -> None:
    assert parse().otlp_endpoint is None  # tracing off unless asked for
    path = write(tmp_path, """
        experts: {general: 'h:1'}
        otlp_endpoint: collector:4317
    """)
    assert parse("--config", path).otlp_endpoint == "collector:4317"
    assert parse("--config", path, "--otlp-endpoint", "http://127.0.0.1:4317").otlp_endpoint == "http://127.0.0.1:4317"
    for bad in ("collector", "http://collector:0"):
        with pytest.raises(ConfigError, match=f"otlp_endpoint: .*got '{bad}'"):
            parse("--otlp-endpoint", bad)
