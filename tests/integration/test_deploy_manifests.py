"""The deployment files, checked offline: schemas, strict Kubernetes validation, invariants.

No Docker daemon, cluster or network is needed. Kubernetes manifests are
validated in strict mode (unknown fields are errors) against the schemas the
pinned kubernetes-validate wheel ships, the KEDA ScaledObject against
deploy/schemas/, docker-compose.yml against the compose-spec schema that
check-jsonschema vendors, the NATS configs by `nats-server -t`, and both
mailbus configs by the configuration loader itself. The mutation tests prove
each validator actually rejects a broken file, so a green run means something.

Bus permissions: compose and Kubernetes include the same generated
deploy/nats/permissions.conf, which must stay exactly what
libs/common/contract/permissions.py prints, and every service connects as its own user.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import nats
import nats.errors
import pytest
import yaml

from libs.common.config import Config, ConfigError, load_config
from libs.common.config.fieldtypes import split_host_port
from libs.common.contract import permissions, subjects
from libs.common.runtime.embedded_nats import EmbeddedNats, nats_server_binary
from tests.support.certs import Authority

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "mailbus.yaml"
COMPOSE_NATS_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
PERMISSIONS_CONF = ROOT / "deploy" / "nats" / "permissions.conf"
SYNC_PERMISSIONS = "python deploy/nats/sync_permissions.py"
KEDA_SCHEMA = ROOT / "deploy" / "schemas" / "keda-scaledobject-v1alpha1.json"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"

# The oldest Kubernetes minor the manifests promise to work on.
K8S_VERSION = "1.33.0"
# Kinds that are not built in; each is checked against its own schema instead.
CUSTOM_KINDS = {"ScaledObject"}
# Not applied by the kustomization, but validated like the rest.
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secrets.example.yaml"}
SERVICES = subjects.SERVICES
CONFIG_PATH = "/etc/mailbus/mailbus.yaml"
# One password per NATS user (key = user name), read by NATS and the services.
NATS_USERS_SECRET = "mailbus-nats-users"
NATS_USERS = [permissions.ADMIN_USER, *(subjects.service_name(s) for s in SERVICES)]
ABSENT_SECRETS = "mailbus-absent-secrets"
NATS_TLS_SECRET = "nats-tls"
# The Secrets each service reads, and so the only ones its pod may mount (besides
# the NATS servers' CA, which every service needs to verify them).
SECRETS_OF = {
    "ingress": {"mailbus-tls"},
    "policy": {"mailbus-users"},
    "delivery": {"mailbus-relay-auth"},
    "queue": set(),
    "notifier": set(),
}
INCLUDE_PERMISSIONS = re.compile(r"^\s*include\s+\"?\./permissions\.conf\"?\s*$", re.M)


# ---- loading -------------------------------------------------------------------


@functools.cache
def _parsed(path: Path, mtime_ns: int) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_docs(path: Path) -> list[dict[str, Any]]:
    """The documents of a YAML file; a fresh copy each time, so a test may change it."""
    return copy.deepcopy(_parsed(path, path.stat().st_mtime_ns))


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def all_docs() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_docs(path)]


def docs_of(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in all_docs() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in docs_of(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def deployment(service: str) -> dict[str, Any]:
    return named("Deployment", f"mailbus-{service}")


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod"
    only: dict[str, Any] = containers[0]
    return only


def configmap_text() -> str:
    text = named("ConfigMap", "mailbus-config")["data"]["mailbus.yaml"]
    assert isinstance(text, str)
    return text


def secrets_by_name() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs_of("Secret")}


def secret_keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+):-([^}]*)\}")


def compose_value(value: str, env: Mapping[str, str] | None = None) -> str:
    """A compose value with `${VAR:-default}` interpolated as `docker compose` would."""
    env = env or {}
    resolved = _COMPOSE_VARIABLE.sub(lambda m: env.get(m[1]) or m[2], value)
    assert "$" not in resolved, f"uninterpolated or without a default: {value}"
    return resolved


def compose_nats_env() -> dict[str, str]:
    """The nats container's passwords with the demo defaults (MAILBUS_DEMO aside)."""
    env = compose()["services"]["nats"]["environment"]
    return {name: compose_value(value) for name, value in env.items() if name != "MAILBUS_DEMO"}


def password_variables(conf: str) -> dict[str, str]:
    """Each user of a generated permissions file -> the variable holding its password."""
    found = re.findall(r'\{user: "([^"]+)", password: \$(\w+)', conf)
    return dict(found)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def k8s_nats_env() -> dict[str, str]:
    """The environment a NATS pod gets, its Secret values from secrets.example.yaml."""
    env = {
        "SERVER_NAME": "nats-0",
        "CLIENT_ADVERTISE": "nats-0.nats-headless.mailbus.svc:4222",
        "CLUSTER_ADVERTISE": "nats-0.nats-headless.mailbus.svc:6222",
    }
    secrets = secrets_by_name()
    for name, entry in env_of(container(named("StatefulSet", "nats"))).items():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            env[name] = secrets[ref["name"]]["stringData"][ref["key"]]
    return env


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe or Service port, named or numbered, as the container's port number."""
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert matches, f"container {c['name']} has no port named {port!r}"
    return int(matches[0])


# ---- validators (the tests below run them on the real files and on broken copies) ----


def keda_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads(KEDA_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def manifest_errors(path: Path) -> list[str]:
    """Every problem in one manifest file; an unknown kind is a problem, never a skip."""
    errors: list[str] = []
    for doc in load_docs(path):
        where = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in CUSTOM_KINDS:
            errors += [f"{where}: {e}" for e in keda_errors(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    return errors


def compose_errors(path: Path) -> str:
    """check-jsonschema's complaints about a compose file; empty when it is valid."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


def nats_conf_errors(path: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    return "" if proc.returncode == 0 else proc.stdout + proc.stderr


# ---- schema validation ---------------------------------------------------------


def test_pinned_kubernetes_version_is_shipped_by_kubernetes_validate() -> None:
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_in_strict_mode(path: Path) -> None:
    assert manifest_errors(path) == []


def test_only_known_custom_kinds() -> None:
    kinds = {doc["kind"] for doc in all_docs()}
    assert kinds & CUSTOM_KINDS == CUSTOM_KINDS
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret"} <= kinds


def test_keda_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(KEDA_SCHEMA.read_text()))


def test_compose_file_matches_compose_spec() -> None:
    assert compose_errors(COMPOSE_FILE) == ""


def test_compose_nats_config_is_accepted_by_nats_server() -> None:
    # With the passwords compose gives the container; permissions.conf included.
    assert nats_conf_errors(COMPOSE_NATS_CONF, compose_nats_env()) == ""


def test_k8s_nats_config_is_accepted_by_nats_server(tmp_path: Path) -> None:
    # The whole ConfigMap as mounted (both keys side by side), with the
    # environment of the StatefulSet and the Secret values of secrets.example.yaml;
    # the certificates of nats-tls made by a test CA.
    ca = Authority.create(tmp_path, "nats-ca")
    issued = ca.issue(tmp_path, "nats-0.nats-headless")
    tls_dir = tmp_path / "nats-tls"
    tls_dir.mkdir()
    (tls_dir / "tls.crt").write_bytes(issued.cert_file.read_bytes())
    (tls_dir / "tls.key").write_bytes(issued.key_file.read_bytes())
    (tls_dir / "ca.crt").write_bytes(ca.file.read_bytes())
    for key, text in named("ConfigMap", "nats-config")["data"].items():
        (tmp_path / key).write_text(text.replace("/etc/nats-tls/", f"{tls_dir}/"))
    assert nats_conf_errors(tmp_path / "nats.conf", k8s_nats_env()) == ""


# ---- the validators reject broken files ------------------------------------------


def _mutated_copy(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{old!r} not in {source.name}"
    target = tmp_path / source.name
    target.write_text(text.replace(old, new, 1))
    return target


@pytest.mark.parametrize(
    ("source", "old", "new", "complaint"),
    [
        # A number written as a word.
        ("queue.yaml", "  replicas: 3\n", '  replicas: "three"\n', "replicas"),
        # A misspelt field, which a lax validator (and kubectl apply) would drop.
        ("ingress.yaml", "          args: [", "          argz: [", "argz"),
        # A wrong type deep inside a pod template.
        ("delivery.yaml", "containerPort: 9100", "containerPort: metrics", "containerPort"),
        # A field that does not exist in autoscaling/v2.
        ("policy.yaml", "  minReplicas: 2\n", "  minReplicas: 2\n  targetCPU: 70\n", "targetCPU"),
        # StatefulSet volumeClaimTemplates with a wrong shape.
        ("nats.yaml", 'accessModes: ["ReadWriteOnce"]', "accessModes: ReadWriteOnce", "access"),
    ],
)
def test_broken_manifest_fails_validation(
    tmp_path: Path, source: str, old: str, new: str, complaint: str
) -> None:
    errors = manifest_errors(_mutated_copy(tmp_path, K8S / source, old, new))
    assert errors, f"a broken {source} passed validation"
    assert any(complaint.lower() in e.lower() for e in errors), errors


def test_unknown_kind_is_an_error_not_a_skip(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: x\n")
    assert manifest_errors(path)


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        # A required key misspelt.
        ("        consumer: delivery ", "        consumr: delivery ", "'consumer' is a required"),
        # KEDA takes metadata values as strings only.
        ('lagThreshold: "50"', "lagThreshold: 50", "not of type 'string'"),
        # A target without a name (the duplicate `kind` key replaces it).
        ("    name: mailbus-delivery\n  #", "    kind: Deployment\n  #", "'name' is a required"),
        ("  triggers:\n", "  trigers:\n", "'triggers' is a required"),
        ("type: nats-jetstream", "type: nats-jetstream\n      metricType: Sometimes", "Sometimes"),
    ],
)
def test_broken_scaledobject_fails_validation(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    path = _mutated_copy(tmp_path, K8S / "delivery-scaledobject.yaml", old, new)
    errors = manifest_errors(path)
    assert any(complaint in e for e in errors), errors


def test_scaledobject_without_endpoint_needs_an_authentication_ref(tmp_path: Path) -> None:
    doc = load_docs(K8S / "delivery-scaledobject.yaml")[0]
    trigger = doc["spec"]["triggers"][0]
    del trigger["metadata"]["natsServerMonitoringEndpoint"]
    del trigger["metadata"]["account"]
    assert keda_errors(doc)
    trigger["authenticationRef"] = {"name": "mailbus-nats-monitoring"}
    assert keda_errors(doc) == []


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        # The schema lets replicas be a string (for ${VAR} interpolation), so
        # the realistic slip it can catch is the misspelt key.
        ("      replicas: 3", "      replica: 3", "'replica'"),
        ("condition: service_healthy", "condition: healthy", "'healthy'"),
        # Not a compose key; merged into every mailbus service from the anchor.
        ("  init: true", "  init: true\n  restart_policy: always", "restart_policy"),
        ("    image: nats:2.12-alpine", "    image: [nats]", "services.nats.image"),
    ],
)
def test_broken_compose_file_fails_validation(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    errors = compose_errors(_mutated_copy(tmp_path, COMPOSE_FILE, old, new))
    assert complaint in errors, errors


def test_broken_nats_config_fails_validation(tmp_path: Path) -> None:
    (tmp_path / PERMISSIONS_CONF.name).write_text(PERMISSIONS_CONF.read_text())
    path = _mutated_copy(tmp_path, COMPOSE_NATS_CONF, "sync_interval:", "sync_intervall:")
    assert "sync_intervall" in nats_conf_errors(path, compose_nats_env())


def test_nats_config_without_a_password_fails_validation() -> None:
    # Proves `nats-server -t` reads the included permissions, passwords and all.
    env = compose_nats_env()
    missing = permissions.env_password_name(subjects.service_name("queue"))
    del env[missing]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILBUS_")}
    proc = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(COMPOSE_NATS_CONF)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, **env},
    )
    assert proc.returncode != 0
    assert missing in proc.stdout + proc.stderr


# ---- Kubernetes invariants ---------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - NOT_IN_KUSTOMIZATION
    assert listed == on_disk
    namespaces = {
        doc["metadata"].get("namespace") for doc in all_docs() if doc["kind"] != "Namespace"
    }
    assert namespaces == {kustomization["namespace"]}
    rewritten = {image["name"] for image in kustomization["images"]}
    for service in SERVICES:
        assert container(deployment(service))["image"].split(":")[0] in rewritten


def test_one_deployment_per_service_running_that_service() -> None:
    for service in SERVICES:
        c = container(deployment(service))
        assert c["args"] == [f"mailbus-{service}", "--config", CONFIG_PATH]
    assert len(docs_of("Deployment")) == len(SERVICES)


def test_queue_runs_three_replicas_over_its_partitions() -> None:
    queue = deployment("queue")
    assert queue["spec"]["replicas"] == 3
    # One pod at a time, never one more: a leaving pod hands its partitions back.
    assert queue["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    env = {e["name"]: e.get("value") for e in container(queue)["env"]}
    assert env["MAILBUS_SLOT"] == "$(POD_NAME)"  # a restarted container takes over at once
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in docs_of("HorizontalPodAutoscaler")}
    scaled |= {doc["spec"]["scaleTargetRef"]["name"] for doc in docs_of("ScaledObject")}
    assert "mailbus-queue" not in scaled
    # A drain moves one queue pod at a time.
    assert named("PodDisruptionBudget", "mailbus-queue")["spec"] == {
        "maxUnavailable": 1,
        "selector": deployment("queue")["spec"]["selector"],
    }


def test_autoscalers_cover_ingress_policy_and_delivery() -> None:
    hpas = {
        doc["spec"]["scaleTargetRef"]["name"]: doc for doc in docs_of("HorizontalPodAutoscaler")
    }
    assert set(hpas) == {"mailbus-ingress", "mailbus-policy"}
    for hpa in hpas.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert hpa["spec"]["minReplicas"] >= 2
    # An autoscaled Deployment leaves the count to its autoscaler.
    for service in ("ingress", "policy", "delivery"):
        assert "replicas" not in deployment(service)["spec"]


def test_delivery_scales_on_the_lag_of_its_consumer() -> None:
    (scaled,) = docs_of("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mailbus-delivery",
    }
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "nats-jetstream"
    assert meta["stream"] == subjects.JOBS_STREAM
    assert meta["consumer"] == subjects.DELIVERY_CONSUMER
    assert meta["account"] == "$G"
    # The endpoint is the monitoring port of the `nats` Service of nats.yaml.
    host, port = split_host_port(meta["natsServerMonitoringEndpoint"])
    service, namespace = host.split(".")[:2]
    nats = named("Service", service)
    assert nats["metadata"]["namespace"] == namespace
    assert port in {p["port"] for p in nats["spec"]["ports"]}


def test_every_workload_has_a_disruption_budget() -> None:
    workloads = docs_of("Deployment") + docs_of("StatefulSet")
    selectors = [doc["spec"]["selector"] for doc in docs_of("PodDisruptionBudget")]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [s for s in selectors if s["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, workload["metadata"]["name"]


@pytest.mark.parametrize("service", SERVICES)
def test_probes_use_the_metrics_port(service: str) -> None:
    config = k8s_config()
    assert config.telemetry.metrics_address is not None
    metrics_port = split_host_port(config.telemetry.metrics_address)[1]
    c = container(deployment(service))
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert port_number(c, c[probe]["httpGet"]["port"]) == metrics_port, probe


def test_pods_run_locked_down_with_resources() -> None:
    dockerfile_uid = int(re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)[-1])
    for workload in docs_of("Deployment") + docs_of("StatefulSet") + docs_of("Job"):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        if workload["kind"] in ("Deployment", "Job"):
            assert pod["securityContext"]["runAsUser"] == dockerfile_uid, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) == {"cpu", "memory"}, (name, bound)


def test_ingress_service_maps_public_ports_onto_the_listeners() -> None:
    service = named("Service", "mailbus-smtp")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    ingress = deployment("ingress")
    assert service["spec"]["selector"] == ingress["spec"]["selector"]["matchLabels"]
    c = container(ingress)
    mapped = {p["port"]: port_number(c, p["targetPort"]) for p in service["spec"]["ports"]}
    listeners = {listener.name: listener.port for listener in k8s_config().listeners}
    public = {25: "smtp", 587: "submission", 465: "smtps", 110: "pop3"}
    assert mapped == {port: listeners[name] for port, name in public.items()}
    # Only the listeners are public; the metrics port stays inside the cluster.
    assert not any(p > 1024 for p in mapped)


def test_nats_is_a_three_node_jetstream_cluster() -> None:
    sts = named("StatefulSet", "nats")
    replicas = sts["spec"]["replicas"]
    assert replicas == 3
    headless = named("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    claims = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    assert [claim["metadata"]["name"] for claim in claims] == ["data"]
    conf = named("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(r"^\s*store_dir:\s*" + re.escape(mounts["data"]) + "/", conf, re.M)
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M)
    routes = re.findall(r"nats://(\S+):6222", conf)
    name = sts["metadata"]["name"]
    assert routes == [f"{name}-{i}.{headless['metadata']['name']}" for i in range(replicas)]
    assert 8222 in {p["containerPort"] for p in container(sts)["ports"]}
    # mailbus connects to each of the three, and keeps every stream on all of them.
    config = k8s_config()
    assert config.nats.url == [f"nats://{route}:4222" for route in routes]
    assert config.nats.stream_replicas == replicas


def test_compose_nats_config_fsyncs_every_write() -> None:
    assert re.search(r"^\s*sync_interval:\s*always\s*$", COMPOSE_NATS_CONF.read_text(), re.M)


# ---- the mailbus configuration in the ConfigMap and its secret files ---------------


def file_keys(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (dotted key, path) of a *_file key with a value, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else str(key)
            if str(key).endswith("_file") and isinstance(value, str):
                yield dotted, value
            else:
                yield from file_keys(value, dotted)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from file_keys(item, f"{path}.{index}")


def secret_files(workload: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Each file a pod gets from a Secret, or a stand-in for one from the ConfigMap
    mailbus-absent-secrets: its path -> (Secret or ConfigMap name, optional)."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = secrets_by_name()
    files: dict[str, tuple[str, bool]] = {}
    for mount in container(workload)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if volume.get("configMap", {}).get("name") == ABSENT_SECRETS:
            for item in volume["configMap"]["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = (ABSENT_SECRETS, False)
            continue
        source = volume.get("secret")
        if source is None:
            continue
        name = source["secretName"]
        assert name in secrets, f"volume {mount['name']} mounts unknown Secret {name}"
        items = source.get("items") or [{"key": k, "path": k} for k in secret_keys(secrets[name])]
        for item in items:
            files[f"{mount['mountPath']}/{item['path']}"] = (name, bool(source.get("optional")))
    return files


def mounted_secrets(workload: dict[str, Any]) -> dict[str, set[str]]:
    """Secret name -> the keys of it a pod mounts."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    found: dict[str, set[str]] = {}
    for mount in container(workload)["volumeMounts"]:
        source = volumes[mount["name"]].get("secret")
        if source is not None:
            secret = secrets_by_name()[source["secretName"]]
            keys = {i["key"] for i in source.get("items", [])} or secret_keys(secret)
            found.setdefault(source["secretName"], set()).update(keys)
    return found


def test_config_is_mounted_where_the_services_read_it() -> None:
    for service in SERVICES:
        workload = deployment(service)
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [
            m for m in container(workload)["volumeMounts"] if m["mountPath"] == "/etc/mailbus"
        ]
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True
        assert volumes[mounts[0]["name"]]["configMap"]["name"] == "mailbus-config"
    assert CONFIG_PATH == "/etc/mailbus/" + next(iter(named("ConfigMap", "mailbus-config")["data"]))


@pytest.mark.parametrize("service", SERVICES)
def test_every_secret_file_of_the_config_is_mounted(service: str) -> None:
    referenced = dict(file_keys(yaml.safe_load(configmap_text())))
    assert set(referenced) >= {
        "tls.cert_file",
        "tls.key_file",
        "users_file",
        "delivery.relay_host.auth.password_file",
    }
    files = secret_files(deployment(service))
    for key, path in referenced.items():
        assert path in files, f"{key}: {path} is not mounted in mailbus-{service}"
        assert files[path][1] is False, f"{key}: {path} must not come from an optional Secret"


def k8s_config() -> Config:
    """The ConfigMap's configuration, loaded with its secret files laid out in a temp dir.

    Laid out from the Secret keys the ingress pod mounts, so a path in the config
    that no mounted Secret provides fails here exactly as it would in the pod.
    """
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for path in secret_files(deployment("ingress")):
            target = base / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("users: []\n" if path.endswith(".yaml") else "placeholder\n")
        text = configmap_text().replace("/run/secrets/", f"{base}/run/secrets/")
        config_file = base / "mailbus.yaml"
        config_file.write_text(text)
        return load_config(config_file)


def test_k8s_config_passes_the_config_check() -> None:
    config = k8s_config()
    assert config.nats.stream_replicas == 3
    assert config.nats.credentials_file is None
    assert config.delivery.relay_host.auth.enabled
    assert all(listener.host == "0.0.0.0" for listener in config.listeners)
    assert {listener.port for listener in config.listeners} == {2525, 2587, 2465, 2110}
    # No client is trusted to relay by address (see the comment in the ConfigMap).
    assert config.relay.mode == "restricted"
    assert config.relay.allowed_ip_group is None


def test_k8s_config_check_names_a_missing_secret_file(tmp_path: Path) -> None:
    text = configmap_text().replace("/run/secrets/", f"{tmp_path}/run/secrets/")
    (tmp_path / "mailbus.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "mailbus.yaml")
    assert any("tls.cert_file" in line for line in caught.value.errors)


# ---- docker compose ------------------------------------------------------------------


def test_compose_demo_config_passes_the_config_check() -> None:
    config = load_config(COMPOSE_CONFIG)
    services = compose()["services"]
    assert config.nats.url == ["nats://nats:4222"]
    assert config.telemetry.metrics_address == "0.0.0.0:9100"
    assert all(listener.host == "0.0.0.0" for listener in config.listeners)
    # Relaying is allowed from the compose network only, and goes to the sink.
    assert config.relay.mode == "restricted"
    assert config.relay.allowed_ip_group is not None
    group = config.ip_group(config.relay.allowed_ip_group)
    assert group is not None
    (subnet,) = [c["subnet"] for c in compose()["networks"]["mailbus"]["ipam"]["config"]]
    gateway = subnet.split("/")[0].rsplit(".", 1)[0] + ".1"
    assert group.contains(gateway)
    assert not group.contains("192.0.2.1")
    assert config.delivery.mode == "relay"
    assert config.delivery.relay_host.host in services


def test_compose_runs_every_service_with_traces() -> None:
    services = compose()["services"]
    published = {
        int(port.rsplit(":", 2)[-2]): int(port.rsplit(":", 1)[-1])
        for port in services["ingress"]["ports"]
    }
    listeners = {listener.port for listener in load_config(COMPOSE_CONFIG).listeners}
    assert listeners <= set(published.values())
    for service in SERVICES:
        spec = services[service]
        assert spec["command"] == [f"mailbus-{service}", "--config", CONFIG_PATH]
        assert spec["build"]["context"] == "."
        assert spec["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert f"./deploy/compose/mailbus.yaml:{CONFIG_PATH}:ro" in spec["volumes"]
        assert spec["read_only"] is True
        assert spec["depends_on"]["nats"]["condition"] == "service_healthy"
    assert services["delivery"]["deploy"]["replicas"] == 3
    assert services["queue"]["deploy"]["replicas"] == 3
    assert "16686:16686" in " ".join(services["jaeger"]["ports"])


def test_compose_nats_runs_jetstream_from_the_mounted_config() -> None:
    nats = compose()["services"]["nats"]
    image, tag = nats["image"].split(":")
    assert image == "nats"
    major, minor = (int(part) for part in tag.split("-")[0].split(".")[:2])
    assert (major, minor) >= (2, 12)  # JetStream message schedules (durable timers)
    assert "./deploy/nats/nats-server.conf:/etc/nats/nats-server.conf:ro" in nats["volumes"]
    assert nats["command"] == ["--config", "/etc/nats/nats-server.conf"]
    assert any(v.startswith("nats-data:") for v in nats["volumes"])
    assert "nats-data" in compose()["volumes"]
    assert any(p.endswith(":8222") for p in nats["ports"])


def test_compose_bind_mounts_exist() -> None:
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name}: {source}"


# ---- bus permissions: one generated file, one NATS user per service ------------------


@pytest.mark.parametrize("where", ["deploy/nats/permissions.conf", "nats-config ConfigMap"])
def test_permissions_file_is_what_the_module_generates(where: str) -> None:
    if where.startswith("deploy/"):
        text = (ROOT / where).read_text()
    else:
        text = named("ConfigMap", "nats-config")["data"]["permissions.conf"]
    assert text == permissions.deploy_file(), f"{where} is stale: run {SYNC_PERMISSIONS}"


def test_every_nats_config_includes_the_permissions() -> None:
    assert INCLUDE_PERMISSIONS.search(COMPOSE_NATS_CONF.read_text())
    assert INCLUDE_PERMISSIONS.search(named("ConfigMap", "nats-config")["data"]["nats.conf"])
    # An include is relative to the including file: both lie side by side.
    volumes = compose()["services"]["nats"]["volumes"]
    assert "./deploy/nats/nats-server.conf:/etc/nats/nats-server.conf:ro" in volumes
    assert "./deploy/nats/permissions.conf:/etc/nats/permissions.conf:ro" in volumes
    sts = named("StatefulSet", "nats")
    c = container(sts)
    conf_dir = c["args"][c["args"].index("--config") + 1].rsplit("/", 1)[0]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == conf_dir]
    (volume,) = [
        v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    assert volume["configMap"]["name"] == "nats-config"
    assert "items" not in volume["configMap"]  # every key, permissions.conf included


def test_every_user_has_its_own_password() -> None:
    variables = password_variables(permissions.deploy_file())
    assert sorted(variables) == sorted(NATS_USERS)
    assert variables == {user: permissions.env_password_name(user) for user in NATS_USERS}
    # compose: the nats container gets each from the environment, with a demo default.
    compose_env = compose_nats_env()
    assert set(compose_env) == set(variables.values())
    assert len(set(compose_env.values())) == len(compose_env)
    # Kubernetes: the StatefulSet gets each from the Secret, under the user's name.
    sts_env = env_of(container(named("StatefulSet", "nats")))
    for user, variable in variables.items():
        assert sts_env[variable]["valueFrom"]["secretKeyRef"] == {
            "name": NATS_USERS_SECRET,
            "key": user,
        }
    example = secrets_by_name()[NATS_USERS_SECRET]
    assert secret_keys(example) == set(NATS_USERS)
    # Placeholders nats-server takes as one token and a URL takes unescaped.
    for value in [*compose_env.values(), *example["stringData"].values()]:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", value), value


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_service_connects_as_its_own_user(service: str) -> None:
    user = subjects.service_name(service)
    variable = permissions.env_password_name(user)
    c = container(deployment(service))
    env = c["env"]
    names = [e["name"] for e in env]
    assert not any("secretRef" in source for source in c.get("envFrom", []))
    # Its own key of the Secret, and no other (in particular not mailbus-admin's).
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
        and e["valueFrom"]["secretKeyRef"]["name"] == NATS_USERS_SECRET
    ]
    assert refs == [{"name": NATS_USERS_SECRET, "key": user}]
    by_name = env_of(c)
    assert by_name[variable]["valueFrom"]["secretKeyRef"]["key"] == user
    # $(VAR) expands only when VAR is defined earlier in the list.
    assert names.index(variable) < names.index("MAILBUS_NATS_URL")
    urls = by_name["MAILBUS_NATS_URL"]["value"].split(",")
    parts = [urlsplit(url) for url in urls]
    assert {(p.scheme, p.username, p.password) for p in parts} == {("nats", user, f"$({variable})")}
    # The same three servers as nats.url in the ConfigMap, which it replaces.
    servers = [f"nats://{p.hostname}:{p.port}" for p in parts]
    assert servers == k8s_config().nats.url


@pytest.mark.parametrize("service", SERVICES)
def test_compose_service_connects_as_its_own_user(service: str) -> None:
    user = subjects.service_name(service)
    variable = permissions.env_password_name(user)
    url = compose()["services"][service]["environment"]["MAILBUS_NATS_URL"]
    # The variable the nats container reads for this user, demo default and all.
    assert f"${{{variable}:-" in url
    parts = urlsplit(compose_value(url))
    assert (parts.scheme, parts.username) == ("nats", user)
    assert parts.password == compose_nats_env()[variable]
    assert [f"nats://{parts.hostname}:{parts.port}"] == load_config(COMPOSE_CONFIG).nats.url
    # A password set in the operator's environment reaches both sides.
    assert urlsplit(compose_value(url, {variable: "s3cret"})).password == "s3cret"
    nats_env = compose()["services"]["nats"]["environment"]
    assert compose_value(nats_env[variable], {variable: "s3cret"}) == "s3cret"


async def test_deployed_permissions_take_passwords_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-server with the committed file: the env password admits its user only,
    who may ask policy but not publish a delivery result."""
    passwords = {user: f"pw{i}{user.replace('-', '')}" for i, user in enumerate(NATS_USERS)}
    for user, password in passwords.items():
        monkeypatch.setenv(permissions.env_password_name(user), password)
    data = tmp_path / "nats"
    data.mkdir()
    (data / "permissions.conf").write_text(PERMISSIONS_CONF.read_text())
    server = EmbeddedNats(data_dir=data, extra_config="include ./permissions.conf\n")
    await server.astart()
    try:
        hostport = f"127.0.0.1:{server.port}"
        ingress = subjects.service_name("ingress")
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                f"nats://{ingress}:{passwords[permissions.ADMIN_USER]}@{hostport}",
                allow_reconnect=False,
                connect_timeout=2,
            )
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            f"nats://{ingress}:{passwords[ingress]}@{hostport}",
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=on_error,
        )
        try:
            await nc.publish(subjects.policy_subject("connect"), b"{}")
            await nc.flush(timeout=2)
            forbidden = subjects.event_subject("q1", "DeliverySucceeded")
            await nc.publish(forbidden, b"{}")
            await nc.flush(timeout=2)
            for _ in range(40):
                if errors:
                    break
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
        # Only the forbidden publish was refused (nats-py lowercases the message).
        assert [e.lower() for e in errors] == [
            f'nats: permissions violation for publish to "{forbidden.lower()}"'
        ]
    finally:
        await server.astop()


# ---- Dockerfile and entrypoint ------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    stages: list[list[str]] = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_with_a_slim_non_root_runtime() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("python:3.11-slim")
    builder, runtime = dockerfile_stages()
    assert any("pip wheel" in line for line in builder)
    final = "\n".join(runtime)
    assert final.startswith("FROM ${PYTHON_IMAGE} AS runtime")
    for compiler in ("build-essential", "gcc", "apt-get install"):
        assert compiler not in final
    assert "--no-index" in final  # only the builder's wheels, nothing fetched at this stage
    (user,) = re.findall(r"^USER (\S+)", final, re.M)
    assert int(user.split(":")[0]) > 0
    assert re.search(r"^ENTRYPOINT \[", final, re.M)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", final, re.M)
    assert json.loads(cmd) == ["mailbus-ingress", "--config", CONFIG_PATH]


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()
    for stage in dockerfile_stages():
        for line in stage:
            if not line.startswith("COPY ") or "--from" in line:
                continue
            sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
            for source in sources:
                assert source.rstrip("/") in allowed, source
                assert (ROOT / source).exists(), source
    for excluded in (".venv", ".git", "var", "tests"):
        assert excluded not in allowed


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_dockerfile_healthcheck_command(status: int, healthy: bool) -> None:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    (command,) = re.findall(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.M)
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        argv = json.loads(command)
        assert argv[0] == "python"
        proc = subprocess.run(
            [sys.executable, *argv[1:]],
            env={**os.environ, "MAILBUS_HEALTHZ_URL": url},
            capture_output=True,
            timeout=30,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (proc.returncode == 0) is healthy
    default = re.search(r"MAILBUS_HEALTHZ_URL=(\S+)", text)
    assert default and default.group(1) == "http://127.0.0.1:9100/healthz"


def _entrypoint(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "mailbus-delivery"
    fake.write_text('#!/bin/sh\necho "delivery $*"\n')
    fake.chmod(0o755)
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_entrypoint_runs_a_service_by_name(tmp_path: Path) -> None:
    proc = _entrypoint(tmp_path, "delivery", "--log-level", "DEBUG")
    assert (proc.returncode, proc.stdout) == (0, "delivery --log-level DEBUG\n")


def test_entrypoint_runs_any_other_command(tmp_path: Path) -> None:
    proc = _entrypoint(tmp_path, "mailbus-delivery", "--config", CONFIG_PATH)
    assert proc.stdout == f"delivery --config {CONFIG_PATH}\n"
    assert _entrypoint(tmp_path, "echo", "hi").stdout == "hi\n"


def test_entrypoint_without_a_command_says_how(tmp_path: Path) -> None:
    proc = _entrypoint(tmp_path)
    assert proc.returncode == 64
    assert "usage" in proc.stderr


# ---- the cluster: TLS everywhere on the pod network, secrets only where used ---------


@pytest.mark.parametrize("service", SERVICES)
def test_each_pod_mounts_only_the_secrets_its_service_reads(service: str) -> None:
    mounted = mounted_secrets(deployment(service))
    assert mounted.pop(NATS_TLS_SECRET) == {"ca.crt"}  # the CA, never the servers' key
    assert set(mounted) == SECRETS_OF[service]


def _blocks(conf: str, name: str) -> list[str]:
    """The bodies of every `name { ... }` block of a NATS config (nested braces kept)."""
    found = []
    for match in re.finditer(rf"^\s*{name}\s*\{{", conf, re.M):
        depth, start = 1, match.end()
        for index in range(start, len(conf)):
            depth += {"{": 1, "}": -1}.get(conf[index], 0)
            if depth == 0:
                found.append(conf[start:index])
                break
    return found


def _files_of(block: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(cert_file|key_file|ca_file):\s*(\S+)\s*$", block, re.M))


def cluster_tls_errors(
    nats_conf: str, mailbus_yaml: str, sts: dict[str, Any], policies: list[dict[str, Any]]
) -> list[str]:
    """What leaves the pod network in clear or the monitoring port open; [] when nothing."""
    errors: list[str] = []
    without_cluster = nats_conf
    for body in _blocks(nats_conf, "cluster"):
        without_cluster = without_cluster.replace(body, "")
    client_tls = _blocks(without_cluster, "tls")
    if not client_tls or set(_files_of(client_tls[0])) != {"cert_file", "key_file", "ca_file"}:
        errors.append("nats.conf: no tls block for clients")
    cluster = _blocks(nats_conf, "cluster")
    route_tls = _blocks(cluster[0], "tls") if cluster else []
    if not route_tls or not re.search(r"^\s*verify:\s*true\s*$", route_tls[0], re.M):
        errors.append("nats.conf: routes without TLS verified both ways")
    mounts = {m["mountPath"]: m["name"] for m in container(sts)["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    for block in client_tls[:1] + route_tls[:1]:
        for key, path in _files_of(block).items():
            volume = volumes.get(mounts.get(path.rsplit("/", 1)[0], ""), {})
            if volume.get("secret", {}).get("secretName") != NATS_TLS_SECRET:
                errors.append(f"nats.conf: {key} {path} is not from the Secret {NATS_TLS_SECRET}")
    ca_file = (yaml.safe_load(mailbus_yaml).get("nats") or {}).get("tls_ca_file")
    if not ca_file:
        errors.append("mailbus.yaml: nats.tls_ca_file is not set: servers not verified")
    else:
        for service in SERVICES:
            source = secret_files(deployment(service)).get(ca_file)
            if source is None or source[0] != NATS_TLS_SECRET:
                errors.append(f"mailbus-{service}: {ca_file} is not the CA of {NATS_TLS_SECRET}")
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if 8222 in ports and any(
                peer.get("namespaceSelector") == {} or not peer for peer in rule.get("from", [{}])
            ):
                errors.append("NetworkPolicy: the monitoring port is open to every namespace")
    return errors


def _cluster_tls_errors(conf: str | None = None, mailbus: str | None = None) -> list[str]:
    nats_conf = conf if conf is not None else named("ConfigMap", "nats-config")["data"]["nats.conf"]
    return cluster_tls_errors(
        nats_conf,
        mailbus if mailbus is not None else configmap_text(),
        named("StatefulSet", "nats"),
        docs_of("NetworkPolicy"),
    )


def test_the_cluster_is_encrypted_and_its_monitoring_closed() -> None:
    assert _cluster_tls_errors() == []
    (policy,) = docs_of("NetworkPolicy")
    (monitoring,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8222]
    allowed = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in monitoring["from"]
    }
    assert allowed == {"keda", "monitoring"}
    # KEDA's namespace can read the lag it scales delivery on.
    (scaled,) = docs_of("ScaledObject")
    assert scaled["metadata"]["namespace"] == "mailbus"


@pytest.mark.parametrize(
    ("where", "old", "new", "complaint"),
    [
        ("nats", "\ntls {\n  cert_file", "\nnotls {\n  cert_file", "for clients"),
        ("nats", "    verify: true\n", "", "routes"),
        ("nats", "\n  tls {\n    cert_file", "\n  notls {\n    cert_file", "routes"),
        ("mailbus", "  tls_ca_file: /run/", "  # tls_ca_file: /run/", "tls_ca_file"),
    ],
)
def test_a_cluster_without_tls_fails_the_check(
    where: str, old: str, new: str, complaint: str
) -> None:
    conf = named("ConfigMap", "nats-config")["data"]["nats.conf"]
    mailbus = configmap_text()
    if where == "nats":
        assert old in conf
        conf = conf.replace(old, new, 1)
    else:
        assert old in mailbus
        mailbus = mailbus.replace(old, new, 1)
    errors = _cluster_tls_errors(conf, mailbus)
    assert errors and all(complaint in e for e in errors), errors


def test_monitoring_open_to_all_fails_the_check() -> None:
    (policy,) = docs_of("NetworkPolicy")
    for rule in policy["spec"]["ingress"]:
        if rule["ports"][0]["port"] == 8222:
            rule["from"] = [{"namespaceSelector": {}}]
    errors = cluster_tls_errors(
        named("ConfigMap", "nats-config")["data"]["nats.conf"],
        configmap_text(),
        named("StatefulSet", "nats"),
        [policy],
    )
    assert errors == ["NetworkPolicy: the monitoring port is open to every namespace"]


# ---- docker compose refuses the public demo passwords ---------------------------------

NATS_START = ROOT / "deploy" / "nats" / "start.sh"


def _nats_start(tmp_path: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nats-server"
    fake.write_text('#!/bin/sh\necho "nats-server $*"\n')
    fake.chmod(0o755)
    return subprocess.run(
        ["sh", str(NATS_START), "--config", "/etc/nats/nats-server.conf"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_compose_nats_starts_through_the_demo_check() -> None:
    nats = compose()["services"]["nats"]
    assert nats["entrypoint"] == ["/bin/sh", "/etc/nats/start.sh"]
    assert "./deploy/nats/start.sh:/etc/nats/start.sh:ro" in nats["volumes"]
    assert compose_value(nats["environment"]["MAILBUS_DEMO"]) == "0"


@pytest.mark.parametrize(
    ("demo", "passwords", "starts"),
    [
        ("0", "defaults", False),  # `docker compose up` with nothing set
        ("1", "defaults", True),  # MAILBUS_DEMO=1: a demo, knowingly
        ("0", "own", True),
        ("0", "one unset", False),
    ],
)
def test_compose_refuses_the_demo_passwords(
    tmp_path: Path, demo: str, passwords: str, starts: bool
) -> None:
    env = compose_nats_env()
    if passwords == "own":
        env = {name: f"{i}abc{name[-20:-14]}".lower() for i, name in enumerate(env)}
    elif passwords == "one unset":
        env = {name: "a1b2c3" for name in env}
        env.pop(permissions.env_password_name(subjects.service_name("queue")))
    proc = _nats_start(tmp_path, {**env, "MAILBUS_DEMO": demo})
    if starts:
        assert (proc.returncode, proc.stdout) == (
            0,
            "nats-server --config /etc/nats/nats-server.conf\n",
        )
    else:
        assert proc.returncode == 78 and proc.stdout == ""
        assert "MAILBUS_DEMO=1" in proc.stderr


# --- topology ownership: `mailbus migrate` as the admin user, services only verify ---------------


def test_a_job_migrates_the_topology_as_the_admin_user() -> None:
    job = named("Job", "mailbus-migrate")
    c = container(job)
    args = c["args"]
    assert args[:4] == ["mailbus", "migrate", "--config", CONFIG_PATH]
    assert "--check" not in args
    urls = [args[i + 1] for i, a in enumerate(args) if a == "--nats-url"]
    variable = permissions.env_password_name(permissions.ADMIN_USER)
    parts = [urlsplit(url) for url in urls]
    assert {(p.scheme, p.username, p.password) for p in parts} == {
        ("nats", permissions.ADMIN_USER, f"$({variable})")
    }
    assert [f"nats://{p.hostname}:{p.port}" for p in parts] == k8s_config().nats.url
    source = env_of(c)[variable]["valueFrom"]["secretKeyRef"]
    assert source == {"name": NATS_USERS_SECRET, "key": permissions.ADMIN_USER}
    # The NATS CA of nats.tls_ca_file is mounted where the config reads it.
    ca_file = yaml.safe_load(configmap_text())["nats"]["tls_ca_file"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(Path(ca_file).parent) in mounts
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # so the next apply runs it anew


def test_service_users_may_only_verify_the_topology() -> None:
    changing = re.compile(r"^\$JS\.API\.STREAM\.(CREATE|UPDATE|DELETE)\.")
    for service, perms in permissions.service_permissions().items():
        assert not [p for p in perms.publish if changing.match(p)], service
        assert f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}" in perms.publish, service
    assert "$JS.API.STREAM.CREATE." not in PERMISSIONS_CONF.read_text()


def test_compose_migrates_before_the_services_start() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    command = migrate["command"]
    assert command[:4] == ["mailbus", "migrate", "--config", CONFIG_PATH]
    url = urlsplit(compose_value(command[command.index("--nats-url") + 1]))
    assert url.username == permissions.ADMIN_USER
    assert "migrate" not in migrate["depends_on"]
    for service in SERVICES:
        condition = services[service]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", service
