"""deploy/k8s agrees with the router's own config loader: names, ports, probes and grace periods."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router_svc.config import RouterConfig, parse_address, settings_from_mapping

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
EXPERT_FILES = ("experts.yaml", "experts-gpu.yaml")
DEFAULT_EXPERTS = {"code", "math", "science", "medicine", "law", "general"}


def documents(*names: str) -> list[dict]:
    docs = []
    for name in names:
        docs += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return docs


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.fixture(scope="module")
def router_docs() -> list[dict]:
    return documents("namespace.yaml", "router.yaml")


@pytest.fixture(scope="module")
def router_config(router_docs) -> RouterConfig:
    data = find(router_docs, "ConfigMap", "router-config")["data"]["router.yaml"]
    return RouterConfig(**settings_from_mapping(yaml.safe_load(data)))


def test_every_manifest_parses_and_names_its_namespace() -> None:
    files = sorted(K8S.glob("*.yaml"))
    assert {f.name for f in files} >= {"namespace.yaml", "router.yaml", *EXPERT_FILES}
    namespace = find(documents("namespace.yaml"), "Namespace", "expert-router")["metadata"]["name"]
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"]
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == namespace, (path.name, doc["metadata"]["name"])


def test_router_deployment_matches_its_config(router_docs, router_config: RouterConfig) -> None:
    deployment = find(router_docs, "Deployment", "router")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    _, grpc_port = parse_address("listen", router_config.listen)
    _, metrics_port = parse_address("metrics_listen", router_config.metrics_listen)
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert pod["spec"]["terminationGracePeriodSeconds"] >= router_config.grace_s
    # The config file the router reads is the ConfigMap, mounted where --config points.
    mount = container["volumeMounts"][0]
    assert flag(container["args"], "--config") == f"{mount['mountPath']}/router.yaml"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "router-config"
    service = find(router_docs, "Service", "router")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == grpc_port


@pytest.mark.parametrize("experts_file", EXPERT_FILES)
def test_every_configured_expert_has_a_headless_service_and_deployment(
        experts_file: str, router_docs, router_config: RouterConfig) -> None:
    docs = documents(experts_file)
    namespace = find(router_docs, "Namespace", "expert-router")["metadata"]["name"]
    assert set(router_config.expert_names) == DEFAULT_EXPERTS
    for expert in router_config.experts:
        assert expert.dns, f"{expert.name} should be discovered by DNS"
        host, port = parse_address(expert.name, expert.dns)
        service_name, service_namespace, *rest = host.split(".")
        assert service_namespace == namespace and rest == ["svc", "cluster", "local"]
        service = find(docs, "Service", service_name)
        assert service["spec"]["clusterIP"] == "None"  # headless: DNS answers with every pod
        service_port = service["spec"]["ports"][0]
        assert service_port["port"] == port

        selector = service["spec"]["selector"]
        selected = [d for d in docs if d["kind"] == "Deployment"
                    and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"{service_name} selects {len(selected)} Deployments"
        deployment = selected[0]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
            deployment["spec"]["template"]["metadata"]["labels"].items()
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[service_port["targetPort"]] == port
        args = container["args"]
        assert flag(args, "--name") == expert.name
        assert flag(args, "--listen").endswith(f":{port}")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == port
        assert pod["terminationGracePeriodSeconds"] >= float(flag(args, "--grace-s"))
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"]
        if experts_file == "experts-gpu.yaml":
            assert flag(args, "--engine") == "trtllm"
            assert requests["nvidia.com/gpu"] == 1 == container["resources"]["limits"]["nvidia.com/gpu"]
        else:
            assert flag(args, "--engine") == "llamacpp" and "nvidia.com/gpu" not in requests


def test_expert_arguments_are_accepted_by_the_expert_cli() -> None:
    from expert_svc.config import build_arg_parser

    for doc in documents("experts.yaml"):
        if doc["kind"] == "Deployment":
            build_arg_parser().parse_args(doc["spec"]["template"]["spec"]["containers"][0]["args"])
