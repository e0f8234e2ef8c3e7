"""Router configuration: command-line flags and an optional YAML file become one frozen RouterConfig.

Flags override the file. With neither ``--expert`` nor a file listing experts, the router points at
the local stack that ``make run`` starts (``LOCAL_EXPERT_PORTS``). A reload (SIGHUP or a change of
the file) runs the same validation again.

Each scalar setting is declared once, in ``SETTINGS`` (service_base.settings explains the choice of
a small table over pydantic): its flag, YAML key, type, bounds, default, help and whether a reload
applies it. The parser, the YAML typing, the checks in ``RouterConfig``, ``RESTART_ONLY`` and the
tables of docs/configuration.md come from it; the experts (a mapping, not a scalar) and the rules
between settings are code below. Building a config never touches the file system: ``check_files``
reads the TLS files, at start and at each reload.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from service_base.settings import (
    BOOL,
    FLOAT,
    FOLDER,
    INT,
    PATH,
    Setting,
    add_flags,
    check,
    file_table,
    flag_table,
    restart_only,
    typed_from_file,
)
from service_base.tracing import check_endpoint

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

DNS_SCHEME = "dns:///"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Who relays Generate's frames: gRPC's C++ library (router_svc.native_relay) or grpc.aio.
RELAYS = ("native", "python")
# Every file the router reads at start: the setting, and what the file is in messages.
TLS_FILES = ("tls_cert", "tls_key", "tls_client_ca", "upstream_tls_ca", "upstream_tls_cert", "upstream_tls_key")


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


def _check_otlp_endpoint(key: str, value: Any) -> None:
    try:
        check_endpoint(key, value)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _address_check(key: str, value: Any) -> None:
    parse_address(key, value, allow_port_zero=True)


_SECURITY = "security"
# Every scalar setting of the router, declared once: the flags, the YAML keys, their types and
# bounds, the checks RouterConfig runs, the restart-only list and docs/configuration.md's tables
# all come from here. Order: the order of the docs' tables and of --help.
SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "where to serve (port 0: any free port)", default=f"{LOCAL_HOST}:{LOCAL_ROUTER_PORT}",
            flag="--listen", key="listen", metavar="HOST:PORT", restart=True, validate=_address_check),
    Setting("classifier_dir", "classifier artifact folder (`model.onnx` + `metadata.json`); in a file, "
            "relative to the file's folder", kind=FOLDER, nullable=True, flag="--classifier", key="classifier",
            metavar="DIR", default_doc="the packaged artifact"),
    Setting("fallback", "expert for low-confidence prompts and the last resort of failover; one of the experts",
            default="general", flag="--fallback", key="fallback", metavar="NAME"),
    Setting("min_confidence", "below this best score, use the fallback expert", kind=FLOAT, default=0.4,
            low=0.0, high=1.0, flag="--min-confidence", key="min_confidence", metavar="X"),
    Setting("failover_margin", "when the chosen expert has no healthy replica, the next-best experts whose "
            "score is at least the chosen score minus this margin are tried (in score order), then the "
            "fallback expert", kind=FLOAT, default=0.1, low=0.0, high=1.0, key="failover_margin"),
    Setting("cascade_dir", "optional cascade: a cascade model folder (`model.onnx`, `tokenizer.json`, "
            "`cascade.json`; docs/configuration.md, Optional cascade) that rescores the prompts whose best classifier score is below "
            "its threshold, in a thread of its own; in a file, relative to the file's folder", kind=FOLDER,
            nullable=True, flag="--cascade-model", key="cascade_model", metavar="DIR", default_doc="off"),
    Setting("cascade_below", "with --cascade-model: rescore the prompts whose best classifier score is below "
            "this", kind=FLOAT, nullable=True, low=0.0, high=1.0, flag="--cascade-below", key="cascade_below",
            metavar="X", default_doc="the model's `threshold`"),
    Setting("cascade_threads", "with --cascade-model: onnxruntime threads for one cascade run", kind=INT,
            default=1, low=1, high=256, flag="--cascade-threads", key="cascade_threads", metavar="N"),
    Setting("cascade_max_pending", "with --cascade-model: most prompts waiting for or in the cascade at once; "
            "past it the classifier's answer stands", kind=INT, default=4, low=1, high=4096, flag="--cascade-max-pending",
            key="cascade_max_pending", metavar="N"),
    Setting("metrics_listen", "serve Prometheus metrics over HTTP at `http://HOST:PORT/metrics`",
            nullable=True, flag="--metrics-listen", key="metrics_listen", metavar="HOST:PORT", default_doc="off",
            restart=True, validate=_address_check),
    Setting("http_listen", "also serve the OpenAI-compatible HTTP API here (/v1/chat/completions, "
            "/v1/completions, /v1/models, /health)", nullable=True, flag="--http-listen", key="http_listen",
            metavar="HOST:PORT", default_doc="off", restart=True, validate=_address_check),
    Setting("workers", "router processes sharing the port (SO_REUSEPORT)", kind=INT, default=1, low=1,
            flag="--workers", key="workers", metavar="N", default_doc="the number of cores", restart=True),
    Setting("max_in_flight", "streams in flight at once, all experts (0: no bound)", kind=INT, default=1024,
            low=0, flag="--max-in-flight", key="max_in_flight", metavar="N"),
    Setting("max_in_flight_per_expert", "streams in flight at once per expert (0: no bound)", kind=INT,
            default=0, low=0, flag="--max-in-flight-per-expert", key="max_in_flight_per_expert", metavar="N"),
    Setting("queue_size", "requests that may wait for a slot over a bound (0: reject at once)", kind=INT,
            default=0, low=0, flag="--queue-size", key="queue_size", metavar="N"),
    Setting("queue_timeout_s", "longest wait in that queue, seconds", kind=FLOAT, default=1.0, low=0.0,
            high=3600.0, flag="--queue-timeout-s", key="queue_timeout_s", metavar="S"),
    Setting("retry_after_ms", "the hint sent in the `retry-after-ms` trailing metadata of RESOURCE_EXHAUSTED "
            "answers", kind=INT, default=200, low=0, key="retry_after_ms"),
    Setting("grace_s", "seconds in-flight streams get to finish on SIGTERM", kind=FLOAT, default=10.0, low=0.0,
            high=3600.0, flag="--grace-s", key="grace_s", metavar="S"),
    Setting("log_format", "text or JSON lines (`json`: every log line is a JSON object)", default="text",
            choices=LOG_FORMATS, flag="--log-format", key="log_format"),
    Setting("log_level", "the root log level; WARNING also silences the per-request lines", default="INFO",
            choices=LOG_LEVELS, flag="--log-level", metavar="LEVEL", restart=True),
    Setting("log_prompts", "debug only: include prompts and outputs in request logs", kind=BOOL, default=False,
            flag="--log-prompts", key="log_prompts"),
    Setting("reload_poll_s", "how often the config file's modification time is checked, seconds", kind=FLOAT,
            default=1.0, low=0.05, high=3600.0, key="reload_poll_s"),
    Setting("max_prompt_bytes", "largest prompt in UTF-8 bytes, all messages together", kind=INT,
            default=256 * 1024, low=1, flag="--max-prompt-bytes", key="max_prompt_bytes", metavar="N"),
    Setting("max_message_bytes", "gRPC message size limit, both directions, here and to the experts",
            kind=INT, default=4 * 1024 * 1024, low=1024, flag="--max-message-bytes", key="max_message_bytes",
            metavar="N"),
    Setting("max_batch", "most prompts the classifier scores in one micro-batch", kind=INT, default=64, low=1,
            key="max_batch"),
    Setting("health_interval_s", "cap of the health-watch reconnect backoff, poll interval for experts "
            "without `Watch`, and cap of the channel reconnect backoff (at most 5 s)", kind=FLOAT, default=2.0,
            low=0.05, high=3600.0, key="health_interval_s"),
    Setting("dns_refresh_s", "how often DNS names are resolved again, seconds", kind=FLOAT, default=10.0,
            low=0.05, high=86400.0, key="dns_refresh_s"),
    Setting("eject_after", "consecutive transport failures (UNAVAILABLE: refused, reset or lost connections) "
            "that eject a replica; an error the expert returns for one request (INTERNAL, UNKNOWN, "
            "DATA_LOSS, ...) does not count", kind=INT, default=3, low=1, key="eject_after"),
    Setting("eject_base_s", "first ejection time; it doubles with each further ejection without a success "
            "in between", kind=FLOAT, default=1.0, low=0.0, high=3600.0, key="eject_base_s"),
    Setting("eject_max_s", "longest ejection time (at least `eject_base_s`)", kind=FLOAT, default=30.0,
            low=0.0, high=86400.0, key="eject_max_s"),
    Setting("max_ejected_percent", "most replicas of one expert ejected at once after transport failures, as "
            "a percentage of its replicas, rounded down but at least one (0: never eject); a replica over "
            "the cap stays in rotation and a warning is logged once per run of failures", kind=INT, default=50,
            low=0, high=100, flag="--max-ejected-percent", key="max_ejected_percent", metavar="PCT"),
    Setting("max_attempts", "replicas tried for one request before the expert counts as unavailable",
            kind=INT, default=3, low=1, key="max_attempts"),
    Setting("reflection", "do not serve gRPC server reflection (on by default so grpcurl works)", kind=BOOL,
            default=True, flag="--no-reflection", negate=True, key="reflection", restart=True),
    Setting("relay", "who relays Generate's frames: `native` (gRPC's C++ library, "
            "`router_svc/native/relay.cc`; the default where it was built, else `python` and a log line "
            "says so once) or `python` (grpc.aio)", default="native", choices=RELAYS, flag="--relay",
            key="relay", restart=True, default_doc="`native` where built"),
    Setting("relay_threads", "threads of the native relay, each with its own completion queue (0: the cores, "
            "divided among --workers)", kind=INT, default=0, low=0, flag="--relay-threads", key="relay_threads",
            metavar="N", restart=True),
    Setting("otlp_endpoint", "export OpenTelemetry traces over OTLP/gRPC to this collector (`HOST:PORT`, or "
            "`http://HOST:PORT`; `https://` for TLS with the system's roots)", nullable=True,
            flag="--otlp-endpoint", key="otlp_endpoint", metavar="HOST:PORT", default_doc="off", restart=True,
            validate=_check_otlp_endpoint),
    Setting("tls_cert", "PEM certificate (chain) to serve TLS with", kind=PATH, nullable=True,
            flag="--tls-cert", key="tls_cert", metavar="FILE", default_doc="plaintext", restart=True,
            group=_SECURITY),
    Setting("tls_key", "PEM private key of --tls-cert", kind=PATH, nullable=True, flag="--tls-key",
            key="tls_key", metavar="FILE", default_doc="none", restart=True, group=_SECURITY),
    Setting("tls_client_ca", "PEM CA: require client certificates signed by it (mutual TLS)", kind=PATH,
            nullable=True, flag="--tls-client-ca", key="tls_client_ca", metavar="FILE", default_doc="none",
            restart=True, group=_SECURITY),
    Setting("upstream_tls_ca", "PEM CA that signs the experts' certificates: connect to the experts over TLS",
            kind=PATH, nullable=True, flag="--upstream-tls-ca", key="upstream_tls_ca", metavar="FILE",
            default_doc="plaintext", group=_SECURITY),
    Setting("upstream_tls_cert", "PEM client certificate for experts that require one (mutual TLS)", kind=PATH,
            nullable=True, flag="--upstream-tls-cert", key="upstream_tls_cert", metavar="FILE",
            default_doc="none", group=_SECURITY),
    Setting("upstream_tls_key", "PEM private key of --upstream-tls-cert", kind=PATH, nullable=True,
            flag="--upstream-tls-key", key="upstream_tls_key", metavar="FILE", default_doc="none",
            group=_SECURITY),
    Setting("auth_tokens", "YAML file of bearer tokens (docs/configuration.md): clients must send "
            "'authorization: Bearer TOKEN'; its contents are reloaded on SIGHUP, turning authentication on or "
            "off needs a restart", doc="require bearer tokens from this file (see [Security](#security)); its "
            "contents are reloaded, turning authentication on or off needs a restart", kind=PATH, nullable=True, flag="--auth-tokens", key="auth_tokens",
            metavar="FILE", default_doc="off", restart=True, group=_SECURITY),
)
_BY_NAME = {setting.name: setting for setting in SETTINGS}
_BY_KEY = {setting.key: setting for setting in SETTINGS if setting.key is not None}
# Settings a reload cannot change (server.py keeps the running value and logs the change).
RESTART_ONLY = restart_only(SETTINGS)


def declared_default(name: str) -> Any:
    """A setting's default as SETTINGS declares it, for the objects built from parts of a RouterConfig."""
    return _BY_NAME[name].default


DEFAULT_FALLBACK: str = _BY_NAME["fallback"].default
DEFAULT_MIN_CONFIDENCE: float = _BY_NAME["min_confidence"].default


def _setting_error(setting: Setting, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{setting.key or setting.name}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router needs to serve; build with ``from_sources`` or directly in tests.

    The field defaults are the ``SETTINGS`` defaults (a test holds them equal). Construction checks
    types, bounds and the rules between settings; it never opens a file (``check_files`` does, at
    start and at each reload).
    """

    experts: tuple[UpstreamExpert, ...]
    listen: str = f"{LOCAL_HOST}:{LOCAL_ROUTER_PORT}"
    classifier_dir: str | None = None
    fallback: str = "general"
    min_confidence: float = 0.4
    max_prompt_bytes: int = 256 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    health_interval_s: float = 2.0
    grace_s: float = 10.0
    max_batch: int = 64
    dns_refresh_s: float = 10.0
    eject_after: int = 3
    eject_base_s: float = 1.0
    eject_max_s: float = 30.0
    # At most this share of an expert's replicas is ejected at once (at least one may always be).
    max_ejected_percent: int = 50
    max_attempts: int = 3
    failover_margin: float = 0.1
    # The optional cascade (router_svc.cascade); None: off.
    cascade_dir: str | None = None
    cascade_below: float | None = None
    cascade_threads: int = 1
    cascade_max_pending: int = 4
    max_in_flight: int = 1024
    max_in_flight_per_expert: int = 0
    queue_size: int = 0
    queue_timeout_s: float = 1.0
    retry_after_ms: int = 200
    metrics_listen: str | None = None
    # The OpenAI-compatible HTTP door (router_svc.http_api); None: gRPC only.
    http_listen: str | None = None
    workers: int = 1
    log_format: str = "text"
    log_level: str = "INFO"
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
    # OTLP/gRPC collector for traces (service_base.tracing); None: tracing off.
    otlp_endpoint: str | None = None
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
        check(SETTINGS, self, _setting_error)
        if self.fallback not in names:
            raise ConfigError(
                f"fallback: expert {self.fallback!r} is not configured (configured: {', '.join(names)})"
            )
        if self.max_prompt_bytes > self.max_message_bytes:
            raise ConfigError(
                f"max_prompt_bytes: {self.max_prompt_bytes} exceeds "
                f"max_message_bytes {self.max_message_bytes}"
            )
        if self.eject_max_s < self.eject_base_s:
            raise ConfigError(f"eject_max_s: expected a number in [{self.eject_base_s:g}, "
                              f"{_BY_NAME['eject_max_s'].high:g}], got {self.eject_max_s!r}")
        self._check_tls_pairs()
        object.__setattr__(self, "expert_names", tuple(names))

    def _check_tls_pairs(self) -> None:
        """The TLS settings that only make sense together; the files themselves are read by ``check_files``."""
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


def check_files(cfg: RouterConfig) -> None:
    """Reads the TLS files ``cfg`` names: a missing file or a key that does not belong to its certificate
    stops the start (or a reload) here, with a message naming the file, not at every handshake.

    Kept out of RouterConfig's construction so that building and validating a config never touches
    the file system; ``__main__`` calls it before serving and ``server.serve`` before binding.
    """
    from service_base.tls import channel_credentials, server_credentials

    try:
        if cfg.tls_cert is not None:
            server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.mutual_tls)
        if cfg.upstream_tls:
            channel_credentials(cfg.upstream_tls_ca, cfg.upstream_tls_cert, cfg.upstream_tls_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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


def relay_threads(cfg: RouterConfig) -> int:
    """The native relay's threads: as configured, else this process's share of the cores.

    Here rather than in router_svc.server so that the --workers supervisor, which passes each worker
    its share, does not import the serving stack (onnxruntime, numpy, gRPC's C++ library): those
    cost the supervisor about 30 MiB of memory it never uses (idle router, benchmarks/router_memory.py).
    """
    return cfg.relay_threads or max(1, default_workers() // max(cfg.workers, 1))


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
    known = ["experts", *_BY_KEY]
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key == "experts":
            settings["experts"] = _experts_from_yaml(value)
        elif key in _BY_KEY:
            setting = _BY_KEY[key]
            settings[setting.name] = typed_from_file(setting, value, base_dir, _setting_error)
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
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file with the same settings and more (docs/configuration.md); flags win; "
                             "reloaded on SIGHUP and when it changes")
    parser.add_argument("--expert", action="append", metavar="NAME=HOST:PORT[,HOST:PORT...]",
                        help="an expert and its replicas; repeat per expert "
                             "(default: the local stack of `make run`)")
    add_flags(parser, SETTINGS)


# Rows of docs/configuration.md's tables for what is not a scalar setting.
FLAG_ROWS = (
    ("| `--config FILE` | none | a file path | | YAML file with any of the keys below; reloaded on SIGHUP and "
     "when it changes |"),
    ("| `--expert NAME=HOST:PORT[,HOST:PORT...]` | the local stack of `make run` | | applied | an expert and its "
     "replicas; repeat per expert |"),
    ("| `--expert NAME=dns:///HOST:PORT` | | | applied | an expert whose replicas are every address HOST "
     "resolves to (a Kubernetes headless Service) |"),
)
KEY_ROWS = (
    ("| `experts` | the local stack | a mapping | applied | mapping of expert name to its replicas, in one of "
     "these forms: `HOST:PORT`; a list of them; `{addresses: [HOST:PORT, ...]}`; `{dns: HOST:PORT}`; "
     "`dns:///HOST:PORT` |"),
)


def docs_tables() -> dict[str, str]:
    """docs/configuration.md's tables, by the name of their markers."""
    return {"router-flags": flag_table(SETTINGS, FLAG_ROWS), "router-keys": file_table(SETTINGS, KEY_ROWS)}


def from_sources(args: argparse.Namespace) -> RouterConfig:
    """Builds the config from a YAML file (if any), then the flags on top; called again on reload."""
    settings: dict[str, Any] = load_file(args.config) if getattr(args, "config", None) else {}
    if getattr(args, "expert", None):
        settings["experts"] = tuple(parse_expert_flag(value) for value in args.expert)
    for setting in SETTINGS:
        value = getattr(args, setting.name, None) if setting.flag is not None else None
        if value is not None:
            settings[setting.name] = value
    settings.setdefault("experts", local_stack_experts())
    settings.setdefault("workers", default_workers())
    return RouterConfig(**settings)


def _check_name(key: str, name: Any) -> None:
    if not isinstance(name, str) or not name or any(ch.isspace() or ch in ",=" for ch in name):
        raise ConfigError(f"{key}: expert names are non-empty, without spaces, ',' or '=', got {name!r}")
