"""Router configuration: command-line flags and an optional YAML file become one frozen RouterConfig.

Flags override the file. With neither ``--expert`` nor a file listing experts, the router points at
the local stack that ``make run`` starts (``LOCAL_EXPERT_PORTS``). Every setting is documented in
docs/configuration.md; a reload (SIGHUP or a change of the file) runs the same validation again.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

LOCAL_HOST = "127.0.0.1"
LOCAL_ROUTER_PORT = 50051
# The default experts (the classifier's labels) and the port each listens on in the local stack.
LOCAL_EXPERT_PORTS: dict[str, int] = {
    "code": 50061,
    "math": 50062,
    "science": 50063,
    "medicine": 50064,
    "law": 50065,
    "general": 50066,
}

DEFAULT_FALLBACK = "general"
DEFAULT_MIN_CONFIDENCE = 0.4
DEFAULT_MAX_PROMPT_BYTES = 256 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_HEALTH_INTERVAL_S = 2.0
DEFAULT_GRACE_S = 10.0
DEFAULT_MAX_BATCH = 64
DEFAULT_DNS_REFRESH_S = 10.0
DEFAULT_EJECT_AFTER = 3
DEFAULT_EJECT_BASE_S = 1.0
DEFAULT_EJECT_MAX_S = 30.0
# At most this share of an expert's replicas is ejected at once (at least one may always be).
DEFAULT_MAX_EJECTED_PERCENT = 50
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_FAILOVER_MARGIN = 0.1
DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_QUEUE_TIMEOUT_S = 1.0
DEFAULT_RETRY_AFTER_MS = 200
DNS_SCHEME = "dns:///"
LOG_FORMATS = ("text", "json")
# Who relays Generate's frames: gRPC's C++ library (router_svc.native_relay) or grpc.aio.
RELAYS = ("native", "python")


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names the key."""


@dataclass(frozen=True)
class UpstreamExpert:
    """One expert the router forwards to: a fixed list of replicas, or a DNS name resolved to all of them.

    ``dns`` is ``HOST:PORT``; every address HOST resolves to is a replica on PORT (a Kubernetes
    headless Service), re-resolved every ``dns_refresh_s``.
    """

    name: str
    addresses: tuple[str, ...] = ()
    dns: str | None = None

    def describe(self) -> str:
        return f"{DNS_SCHEME}{self.dns}" if self.dns else ",".join(self.addresses)


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router needs to serve; build with ``from_sources`` or directly in tests."""

    experts: tuple[UpstreamExpert, ...]
    listen: str = f"{LOCAL_HOST}:{LOCAL_ROUTER_PORT}"
    classifier_dir: str | None = None
    fallback: str = DEFAULT_FALLBACK
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    grace_s: float = DEFAULT_GRACE_S
    max_batch: int = DEFAULT_MAX_BATCH
    dns_refresh_s: float = DEFAULT_DNS_REFRESH_S
    eject_after: int = DEFAULT_EJECT_AFTER
    eject_base_s: float = DEFAULT_EJECT_BASE_S
    eject_max_s: float = DEFAULT_EJECT_MAX_S
    max_ejected_percent: int = DEFAULT_MAX_EJECTED_PERCENT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    failover_margin: float = DEFAULT_FAILOVER_MARGIN
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_in_flight_per_expert: int = 0
    queue_size: int = 0
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    retry_after_ms: int = DEFAULT_RETRY_AFTER_MS
    metrics_listen: str | None = None
    # The OpenAI-compatible HTTP door (router_svc.http_api); None: gRPC only.
    http_listen: str | None = None
    workers: int = 1
    log_format: str = "text"
    log_prompts: bool = False
    reload_poll_s: float = 1.0
    # TLS on the router's own port; a client CA makes it mutual TLS (client certificates required).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # TLS to the experts: the CA that signs their certificates, and this router's client certificate
    # for experts that require one.
    upstream_tls_ca: str | None = None
    upstream_tls_cert: str | None = None
    upstream_tls_key: str | None = None
    # Bearer tokens (router_svc.auth); None: no authentication.
    auth_tokens: str | None = None
    reflection: bool = True
    # native: where the extension was built (else python, said once at start); fixed at start.
    relay: str = "native"
    # Threads of the native relay, each with its own completion queue (0: the cores, shared by --workers).
    relay_threads: int = 0
    # OTLP/gRPC collector for traces (router_svc.tracing); empty: tracing off.
    otlp_endpoint: str = ""
    # Filled in by __post_init__: the expert names in configuration order.
    expert_names: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not self.experts:
            raise ConfigError("experts: at least one expert is required")
        names = [expert.name for expert in self.experts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"experts: duplicate expert name(s): {', '.join(duplicates)}")
        for expert in self.experts:
            key = f"experts.{expert.name}"
            _check_name(key, expert.name)
            if expert.dns is not None:
                if expert.addresses:
                    raise ConfigError(f"{key}: set either addresses or dns, not both")
                parse_address(f"{key}.dns", expert.dns)
            elif not expert.addresses:
                raise ConfigError(f"{key}: at least one HOST:PORT is required")
            for address in expert.addresses:
                parse_address(key, address)
        parse_address("listen", self.listen, allow_port_zero=True)
        if self.fallback not in names:
            raise ConfigError(
                f"fallback: expert {self.fallback!r} is not configured (configured: {', '.join(names)})"
            )
        _check_number("min_confidence", self.min_confidence, 0.0, 1.0)
        _check_int("max_prompt_bytes", self.max_prompt_bytes, 1)
        _check_int("max_message_bytes", self.max_message_bytes, 1024)
        if self.max_prompt_bytes > self.max_message_bytes:
            raise ConfigError(
                f"max_prompt_bytes: {self.max_prompt_bytes} exceeds "
                f"max_message_bytes {self.max_message_bytes}"
            )
        _check_number("health_interval_s", self.health_interval_s, 0.05, 3600.0)
        _check_number("grace_s", self.grace_s, 0.0, 3600.0)
        _check_int("max_batch", self.max_batch, 1)
        _check_number("dns_refresh_s", self.dns_refresh_s, 0.05, 86400.0)
        _check_int("eject_after", self.eject_after, 1)
        _check_number("eject_base_s", self.eject_base_s, 0.0, 3600.0)
        _check_number("eject_max_s", self.eject_max_s, self.eject_base_s, 86400.0)
        if isinstance(self.max_ejected_percent, bool) or not isinstance(self.max_ejected_percent, int):
            raise ConfigError(f"max_ejected_percent: expected an integer in [0, 100], "
                              f"got {self.max_ejected_percent!r}")
        _check_number("max_ejected_percent", self.max_ejected_percent, 0, 100)
        _check_int("max_attempts", self.max_attempts, 1)
        _check_number("failover_margin", self.failover_margin, 0.0, 1.0)
        _check_int("max_in_flight", self.max_in_flight, 0)
        _check_int("max_in_flight_per_expert", self.max_in_flight_per_expert, 0)
        _check_int("queue_size", self.queue_size, 0)
        _check_number("queue_timeout_s", self.queue_timeout_s, 0.0, 3600.0)
        _check_int("retry_after_ms", self.retry_after_ms, 0)
        if self.metrics_listen is not None:
            parse_address("metrics_listen", self.metrics_listen, allow_port_zero=True)
        if self.http_listen is not None:
            parse_address("http_listen", self.http_listen, allow_port_zero=True)
        _check_int("workers", self.workers, 1)
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if not isinstance(self.log_prompts, bool):
            raise ConfigError(f"log_prompts: expected true or false, got {self.log_prompts!r}")
        _check_number("reload_poll_s", self.reload_poll_s, 0.05, 3600.0)
        if not isinstance(self.reflection, bool):
            raise ConfigError(f"reflection: expected true or false, got {self.reflection!r}")
        if self.relay not in RELAYS:
            raise ConfigError(f"relay: expected one of {', '.join(RELAYS)}, got {self.relay!r}")
        _check_int("relay_threads", self.relay_threads, 0)
        check_otlp_endpoint(self.otlp_endpoint)
        self._check_tls()
        object.__setattr__(self, "expert_names", tuple(names))

    def _check_tls(self) -> None:
        """Loads the TLS files now: a bad path or a key that does not match fails at start, not per handshake."""
        from service_base.tls import channel_credentials, server_credentials

        for key in ("tls_cert", "tls_key", "tls_client_ca", "upstream_tls_ca", "upstream_tls_cert",
                    "upstream_tls_key", "auth_tokens"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{key}: expected a file path, got {value!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key (--tls-cert, --tls-key) go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        if (self.upstream_tls_cert is None) != (self.upstream_tls_key is None):
            raise ConfigError("upstream_tls_cert and upstream_tls_key (--upstream-tls-cert, --upstream-tls-key) "
                              "go together: give both or neither")
        if self.upstream_tls_cert is not None and self.upstream_tls_ca is None:
            raise ConfigError("upstream_tls_cert needs upstream_tls_ca: the client certificate is sent over "
                              "TLS, which needs the CA that signs the experts' certificates")
        try:
            if self.tls_cert is not None:
                server_credentials(self.tls_cert, self.tls_key, self.tls_client_ca, self.mutual_tls)
            if self.upstream_tls:
                channel_credentials(self.upstream_tls_ca, self.upstream_tls_cert, self.upstream_tls_key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    @property
    def upstream_tls(self) -> bool:
        return self.upstream_tls_ca is not None

    def with_overrides(self, **changes: Any) -> RouterConfig:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)


def local_stack_experts(host: str = LOCAL_HOST) -> tuple[UpstreamExpert, ...]:
    """The experts of the local stack that ``make run`` starts."""
    return tuple(UpstreamExpert(name, (f"{host}:{port}",)) for name, port in LOCAL_EXPERT_PORTS.items())


def parse_address(key: str, value: Any, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Splits ``HOST:PORT`` (``[v6]:PORT`` for IPv6); raises ConfigError naming ``key``."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    lowest = 0 if allow_port_zero else 1
    if not host or not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT with a port in {lowest}..65535, got {value!r}")
    return host, int(port_text)


def default_workers() -> int:
    """One router process per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_expert_flag(value: str) -> UpstreamExpert:
    """Parses one ``--expert NAME=HOST:PORT[,HOST:PORT...]`` or ``--expert NAME=dns:///HOST:PORT`` value."""
    name, sep, addresses = value.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--expert: expected NAME=HOST:PORT[,HOST:PORT...] or NAME=dns:///HOST:PORT, "
                          f"got {value!r}")
    name = name.strip()
    addresses = addresses.strip()
    if addresses.startswith(DNS_SCHEME):
        target = addresses[len(DNS_SCHEME):]
        parse_address(f"--expert {name}", target)
        return UpstreamExpert(name, dns=target)
    parts = tuple(part.strip() for part in addresses.split(",") if part.strip())
    if not parts:
        raise ConfigError(f"--expert {name}: at least one HOST:PORT is required")
    for part in parts:
        parse_address(f"--expert {name}", part)
    return UpstreamExpert(name, parts)


# YAML key -> RouterConfig field, for the scalar settings.
_FILE_KEYS: dict[str, str] = {
    "listen": "listen",
    "classifier": "classifier_dir",
    "fallback": "fallback",
    "min_confidence": "min_confidence",
    "max_prompt_bytes": "max_prompt_bytes",
    "max_message_bytes": "max_message_bytes",
    "health_interval_s": "health_interval_s",
    "grace_s": "grace_s",
    "max_batch": "max_batch",
    "dns_refresh_s": "dns_refresh_s",
    "eject_after": "eject_after",
    "eject_base_s": "eject_base_s",
    "eject_max_s": "eject_max_s",
    "max_ejected_percent": "max_ejected_percent",
    "max_attempts": "max_attempts",
    "failover_margin": "failover_margin",
    "max_in_flight": "max_in_flight",
    "max_in_flight_per_expert": "max_in_flight_per_expert",
    "queue_size": "queue_size",
    "queue_timeout_s": "queue_timeout_s",
    "retry_after_ms": "retry_after_ms",
    "metrics_listen": "metrics_listen",
    "http_listen": "http_listen",
    "workers": "workers",
    "log_format": "log_format",
    "log_prompts": "log_prompts",
    "reload_poll_s": "reload_poll_s",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
    "tls_client_ca": "tls_client_ca",
    "upstream_tls_ca": "upstream_tls_ca",
    "upstream_tls_cert": "upstream_tls_cert",
    "upstream_tls_key": "upstream_tls_key",
    "auth_tokens": "auth_tokens",
    "reflection": "reflection",
    "relay": "relay",
    "relay_threads": "relay_threads",
    "otlp_endpoint": "otlp_endpoint",
}
_STRING_KEYS = ("listen", "fallback", "metrics_listen", "http_listen", "log_format", "relay")
# Paths: relative ones are taken relative to the config file's folder, like ``classifier``.
_PATH_KEYS = ("tls_cert", "tls_key", "tls_client_ca", "upstream_tls_ca", "upstream_tls_cert", "upstream_tls_key",
              "auth_tokens")
_INT_KEYS = ("max_prompt_bytes", "max_message_bytes", "max_batch", "eject_after", "max_ejected_percent",
             "max_attempts",
             "max_in_flight", "max_in_flight_per_expert", "queue_size", "retry_after_ms", "workers",
             "relay_threads")


def settings_from_mapping(data: Any, *, base_dir: str = ".") -> dict[str, Any]:
    """Validates a parsed YAML document and returns RouterConfig keyword arguments.

    ``experts`` maps each name to one address, a list of addresses, ``{addresses: [...]}``,
    ``{dns: HOST:PORT}`` or the string ``dns:///HOST:PORT``.
    A relative ``classifier`` path is taken relative to ``base_dir`` (the file's folder).
    """
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"the top level must be a mapping of settings, got {type(data).__name__}")
    known = ["experts", *_FILE_KEYS]
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key == "experts":
            settings["experts"] = _experts_from_yaml(value)
        elif key in _FILE_KEYS:
            settings[_FILE_KEYS[key]] = _typed_setting(key, value, base_dir)
        else:
            raise ConfigError(f"unknown key {key!r} (known keys: {', '.join(known)})")
    return settings


def _experts_from_yaml(value: Any) -> tuple[UpstreamExpert, ...]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError("experts: expected a non-empty mapping of NAME: HOST:PORT or a list of them")
    experts = []
    for name, spec in value.items():
        key = f"experts.{name}"
        _check_name(key, name)
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"addresses", "dns"}
            if unknown:
                raise ConfigError(f"{key}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                                  f"(known keys: addresses, dns)")
            if "dns" in spec:
                if "addresses" in spec:
                    raise ConfigError(f"{key}: set either addresses or dns, not both")
                parse_address(f"{key}.dns", spec["dns"])
                experts.append(UpstreamExpert(str(name), dns=spec["dns"]))
                continue
            spec = spec.get("addresses")
        if isinstance(spec, str) and spec.startswith(DNS_SCHEME):
            parse_address(key, spec[len(DNS_SCHEME):])
            experts.append(UpstreamExpert(str(name), dns=spec[len(DNS_SCHEME):]))
            continue
        addresses = (spec,) if isinstance(spec, str) else spec
        if not isinstance(addresses, (list, tuple)) or not addresses:
            raise ConfigError(f"{key}: expected HOST:PORT or a non-empty list of them, got {spec!r}")
        for address in addresses:
            parse_address(key, address)
        experts.append(UpstreamExpert(str(name), tuple(addresses)))
    return tuple(experts)


def _typed_setting(key: str, value: Any, base_dir: str) -> Any:
    if key in _STRING_KEYS:
        if key in ("metrics_listen", "http_listen") and value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    if key == "otlp_endpoint":
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected HOST:PORT or an empty string, got {value!r}")
        return value
    if key in ("log_prompts", "reflection"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if key == "classifier" or key in _PATH_KEYS:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a {'folder' if key == 'classifier' else 'file'} path, got {value!r}")
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def load_file(path: str) -> dict[str, Any]:
    """Reads and validates a YAML config file; errors name the file and the key."""
    import yaml

    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    try:
        return settings_from_mapping(data, base_dir=os.path.dirname(os.path.abspath(path)))
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The router's flags; every default is None so that the file's value shows through."""
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help=f"where to serve (default {LOCAL_HOST}:{LOCAL_ROUTER_PORT})")
    parser.add_argument("--expert", action="append", metavar="NAME=HOST:PORT[,HOST:PORT...]",
                        help="an expert and its replicas; repeat per expert "
                             "(default: the local stack of `make run`)")
    parser.add_argument("--classifier", metavar="DIR", help="classifier artifact folder (default: packaged)")
    parser.add_argument("--fallback", metavar="NAME",
                        help=f"expert for low-confidence prompts (default {DEFAULT_FALLBACK})")
    parser.add_argument("--min-confidence", type=float, metavar="X",
                        help=f"below this best score, use the fallback (default {DEFAULT_MIN_CONFIDENCE})")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file with the same settings and more (docs/configuration.md); flags win; "
                             "reloaded on SIGHUP and when it changes")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus metrics over HTTP here (default: off)")
    parser.add_argument("--http-listen", metavar="HOST:PORT",
                        help="also serve the OpenAI-compatible HTTP API here (/v1/chat/completions, "
                             "/v1/completions, /v1/models, /health; default: off)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="router processes sharing the port (SO_REUSEPORT; default: the number of cores)")
    parser.add_argument("--max-in-flight", type=int, metavar="N",
                        help=f"streams in flight at once, all experts (0: no bound; default {DEFAULT_MAX_IN_FLIGHT})")
    parser.add_argument("--max-in-flight-per-expert", type=int, metavar="N",
                        help="streams in flight at once per expert (0: no bound; default 0)")
    parser.add_argument("--queue-size", type=int, metavar="N",
                        help="requests that may wait for a slot over the bound (default 0: reject at once)")
    parser.add_argument("--queue-timeout-s", type=float, metavar="S",
                        help=f"longest wait in that queue (default {DEFAULT_QUEUE_TIMEOUT_S:g})")
    parser.add_argument("--grace-s", type=float, metavar="S",
                        help=f"seconds in-flight streams get to finish on SIGTERM (default {DEFAULT_GRACE_S:g})")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json lines")
    parser.add_argument("--log-prompts", action="store_true", default=None,
                        help="debug only: include prompts and outputs in request logs")
    parser.add_argument("--max-prompt-bytes", type=int, metavar="N",
                        help=f"largest prompt in UTF-8 bytes, all messages together (default {DEFAULT_MAX_PROMPT_BYTES})")
    parser.add_argument("--max-message-bytes", type=int, metavar="N",
                        help="gRPC message size limit, both directions, here and to the experts "
                             f"(default {DEFAULT_MAX_MESSAGE_BYTES})")
    parser.add_argument("--max-ejected-percent", type=int, metavar="PCT",
                        help="most replicas of one expert ejected at once after transport failures, as a "
                             "percentage of its replicas, rounded down but at least one (0: never eject; "
                             f"default {DEFAULT_MAX_EJECTED_PERCENT})")
    parser.add_argument("--no-reflection", dest="reflection", action="store_false", default=None,
                        help="do not serve gRPC server reflection (on by default so grpcurl works)")
    parser.add_argument("--relay", choices=RELAYS,
                        help="who relays Generate's frames: native (gRPC's C++ library; the default where "
                             "it was built) or python (grpc.aio)")
    parser.add_argument("--relay-threads", type=int, metavar="N",
                        help="threads of the native relay (default 0: the cores, divided among --workers)")
    parser.add_argument("--otlp-endpoint", metavar="HOST:PORT",
                        help="export OpenTelemetry traces over OTLP/gRPC to this collector "
                             "(http://HOST:PORT also accepted; default: tracing off)")
    security = parser.add_argument_group("security")
    security.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve TLS with")
    security.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    security.add_argument("--tls-client-ca", metavar="FILE",
                          help="PEM CA: require client certificates signed by it (mutual TLS)")
    security.add_argument("--upstream-tls-ca", metavar="FILE",
                          help="PEM CA that signs the experts' certificates: connect to the experts over TLS")
    security.add_argument("--upstream-tls-cert", metavar="FILE",
                          help="PEM client certificate for experts that require one (mutual TLS)")
    security.add_argument("--upstream-tls-key", metavar="FILE", help="PEM private key of --upstream-tls-cert")
    security.add_argument("--auth-tokens", metavar="FILE",
                          help="YAML file of bearer tokens (docs/configuration.md): clients must send "
                               "'authorization: Bearer TOKEN'; reloaded on SIGHUP")


# flag attribute -> RouterConfig field, for flags that override one setting.
_FLAG_FIELDS = (("listen", "listen"), ("classifier", "classifier_dir"), ("fallback", "fallback"),
                ("min_confidence", "min_confidence"), ("metrics_listen", "metrics_listen"),
                ("http_listen", "http_listen"), ("workers", "workers"), ("max_in_flight", "max_in_flight"),
                ("max_in_flight_per_expert", "max_in_flight_per_expert"), ("queue_size", "queue_size"),
                ("queue_timeout_s", "queue_timeout_s"), ("grace_s", "grace_s"),
                ("log_format", "log_format"), ("log_prompts", "log_prompts"),
                ("max_prompt_bytes", "max_prompt_bytes"), ("max_message_bytes", "max_message_bytes"),
                ("reflection", "reflection"), ("max_ejected_percent", "max_ejected_percent"),
                ("tls_cert", "tls_cert"), ("tls_key", "tls_key"),
                ("tls_client_ca", "tls_client_ca"), ("upstream_tls_ca", "upstream_tls_ca"),
                ("upstream_tls_cert", "upstream_tls_cert"), ("upstream_tls_key", "upstream_tls_key"),
                ("auth_tokens", "auth_tokens"), ("relay", "relay"), ("relay_threads", "relay_threads"),
                ("otlp_endpoint", "otlp_endpoint"))


def from_sources(args: argparse.Namespace) -> RouterConfig:
    """Builds the config from a YAML file (if any), then the flags on top; called again on reload."""
    settings: dict[str, Any] = load_file(args.config) if getattr(args, "config", None) else {}
    if getattr(args, "expert", None):
        settings["experts"] = tuple(parse_expert_flag(value) for value in args.expert)
    for flag, key in _FLAG_FIELDS:
        value = getattr(args, flag, None)
        if value is not None:
            settings[key] = value
    settings.setdefault("experts", local_stack_experts())
    settings.setdefault("workers", default_workers())
    return RouterConfig(**settings)


def check_otlp_endpoint(value: Any, key: str = "otlp_endpoint") -> None:
    """An OTLP/gRPC collector address: empty (tracing off), HOST:PORT, or http(s)://HOST:PORT."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected HOST:PORT or an empty string, got {value!r}")
    if not value:
        return
    address = value
    for scheme in ("http://", "https://"):
        if address.startswith(scheme):
            address = address[len(scheme):].rstrip("/")
    try:
        parse_address(key, address)
    except ConfigError:
        raise ConfigError(f"{key}: expected HOST:PORT or http://HOST:PORT with a port in 1..65535 "
                          f"(empty: tracing off), got {value!r}") from None


def _check_name(key: str, name: Any) -> None:
    if not isinstance(name, str) or not name or any(ch.isspace() or ch in ",=" for ch in name):
        raise ConfigError(f"{key}: expert names are non-empty, without spaces, ',' or '=', got {name!r}")


def _check_number(key: str, value: Any, low: float, high: float) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not low <= value <= high):
        raise ConfigError(f"{key}: expected a number in [{low:g}, {high:g}], got {value!r}")


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}: expected an integer >= {low}, got {value!r}")

