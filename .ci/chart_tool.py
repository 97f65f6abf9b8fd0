#!/usr/bin/env python3
"""Renders and checks the scopegate Helm chart with a real Helm engine.

    chart_tool.py render-install   # rewrite manifests/install.yaml from the chart
    chart_tool.py render OUT_DIR   # write each value set's rendered chart to OUT_DIR/SET.yaml
    chart_tool.py test             # every chart check; last line "chart tests: N passed, M failed"

Helm is helm-python-sdk (Helm v4's Go SDK); objects are validated with
kubernetes-validate, YAML files with yamllint. Run through .ci/chart-test.sh,
which installs those into .tools/venv first.
"""

from __future__ import annotations

import copy
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kv
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "scopegate"
CRD_NAME = "tokenpolicies.scopegate.dev.yaml"
CHART_CRD = CHART / "crds" / CRD_NAME
MANIFEST_CRD = ROOT / "manifests" / "crds" / CRD_NAME
RBAC = ROOT / "manifests" / "rbac.yaml"
INSTALL = ROOT / "manifests" / "install.yaml"
RELEASE = "scopegate"
NAMESPACE = "scopegate-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion), 1.33,
# and the newest the installed kubernetes-validate knows.
KUBE_VERSIONS = ["1.30.0", "1.33.0", kv.latest_version()]

# Value sets rendered and validated besides the defaults.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["shop", "payments"]},
    "autoscaling": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 3,
            "maxReplicas": 8,
            "targetMemoryUtilizationPercentage": 80,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        }
    },
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "everything-else": {
        "networkPolicy": {
            "enabled": True,
            "grpcFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}}],
            "egress": {"enabled": True},
        },
        "otel": {
            "enabled": True,
            "endpoint": "http://otel-collector.observability:4317",
            "resourceAttributes": {"deployment.environment": "prod"},
        },
        "podDisruptionBudget": {"minAvailable": 1},
        "image": {"digest": "sha256:" + "a" * 64},
        "runAsUser": None,
        "runAsGroup": None,
        "extraArgs": ["--jwks-refresh-interval=10m"],
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "priorityClassName": "system-cluster-critical",
    },
    # Validated against Envoy Gateway's and Gateway API's real CRDs by .ci/wiring-test.sh.
    "envoy-gateway": {
        "envoyGateway": {"securityPolicy": {
            "enabled": True,
            "namespace": "shop",
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"}],
        }},
        "istio": {"providerConfigMap": {"enabled": True}},
    },
}

# Kinds of other projects' CRDs: no schema in kubernetes-validate. The
# ServiceMonitor is checked by check_service_monitor; SecurityPolicy and
# ReferenceGrant by .ci/wiring-test.sh against the real CRDs (../shared/crds).
CRD_KINDS = {"ServiceMonitor", "SecurityPolicy", "ReferenceGrant"}

# Helm's install order (pkg/release/v1/util/kind_sorter.go), for install.yaml.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret",
    "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
    "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
]


# === rendering ===============================================================

def load_chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(values: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm install` would render it."""
    return load_chart().render(values, name=RELEASE, namespace=namespace, is_install=True)


def split_documents(text: str) -> list[str]:
    """The non-empty YAML documents of a multi-document text."""
    docs = re.split(r"^---[ \t]*$", text, flags=re.MULTILINE)
    return [d.strip("\n") for d in docs if yaml.safe_load(d) is not None]


def is_hook(doc: str) -> bool:
    """A Helm hook (e.g. the `helm test` Pod): not part of what is installed."""
    return "helm.sh/hook" in (yaml.safe_load(doc).get("metadata", {}).get("annotations") or {})


def rendered_documents(rendered: dict[str, str]) -> list[tuple[str, str]]:
    """(template path, document text) for every object, NOTES.txt excluded."""
    out = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        out.extend((path, doc) for doc in split_documents(rendered[path]))
    return out


def rendered_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [yaml.safe_load(doc) for _, doc in rendered_documents(render(values))]


def install_order(kind: str) -> int:
    return INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)


def install_yaml() -> str:
    """manifests/install.yaml: namespace, CRD and the chart with default values."""
    namespace = f"""apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest"""
    docs = [("(namespace)", namespace), (f"scopegate/crds/{CRD_NAME}", CHART_CRD.read_text().strip("\n"))]
    docs += [(source, doc) for source, doc in rendered_documents(render({})) if not is_hook(doc)]
    docs.sort(key=lambda d: install_order(yaml.safe_load(d[1])["kind"]))  # stable: keeps template order
    header = (
        "# scopegate: everything `helm install scopegate charts/scopegate -n scopegate-system`\n"
        "# creates with default values, plus its namespace, for clusters without Helm:\n"
        "#   kubectl apply --server-side -f manifests/install.yaml\n"
        "# GENERATED by charts/render-install.sh from charts/scopegate; do not edit.\n"
    )
    body = "".join(f"---\n# Source: {source}\n{doc}\n" for source, doc in docs)
    return header + body


# === checks ==================================================================

class Failure(Exception):
    """A check's assertion failed; the message says what and where."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    require(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objects)["env"]}


def validate_with_kubernetes_schemas(objects: list[dict[str, Any]], version: str) -> None:
    """Every built-in object against the official schema of `version`
    (strict: unknown fields are errors); CRD_KINDS are checked elsewhere."""
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise Failure(f"{name} against Kubernetes {version}: {path}: {e.message}") from None
        except kv.SchemaNotFoundError:
            raise Failure(f"{name}: no schema for {obj['apiVersion']} {obj['kind']} in Kubernetes {version}") from None


def check_env_known_to_binary(objects: list[dict[str, Any]]) -> None:
    """Every SCOPEGATE_* variable the chart sets is one `scopegate serve`
    reads (src/cli.rs), so a renamed flag cannot be silently ignored."""
    known = set(re.findall(r'env\s*=\s*"(SCOPEGATE_[A-Z0-9_]+)"', (ROOT / "src/cli.rs").read_text()))
    require(known, "no SCOPEGATE_* env names found in src/cli.rs")
    unknown = sorted(name for name in env_of(objects) if name.startswith("SCOPEGATE_") and name not in known)
    require(not unknown, f"the chart sets variables scopegate does not read: {unknown}")


def check_restricted_pod_security(objects: list[dict[str, Any]]) -> None:
    """The Deployment's pods and every Pod (the `helm test` one) meet the
    restricted Pod Security Standard."""
    check_pod_spec_restricted(one(objects, "Deployment")["spec"]["template"]["spec"])
    for pod in by_kind(objects, "Pod"):
        check_pod_spec_restricted(pod["spec"])


def check_pod_spec_restricted(pod: dict[str, Any]) -> None:
    """The Pod Security Standard "restricted" profile, rule by rule
    (https://kubernetes.io/docs/concepts/security/pod-security-standards/)."""
    psc = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        require(not pod.get(field), f"pod sets {field}")
    for volume in pod.get("volumes", []):
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
        kinds = set(volume) - {"name"}
        require(kinds <= allowed, f"volume {volume['name']} uses {kinds - allowed}")
    require(psc.get("runAsUser") != 0, "pod runs as UID 0")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        require(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false")
        require(not sc.get("privileged"), f"{where}: privileged")
        require(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities must drop ALL")
        require(not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities")
        require(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot must be true")
        require(sc.get("runAsUser", psc.get("runAsUser")) != 0, f"{where}: runs as UID 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        require(seccomp in ("RuntimeDefault", "Localhost"), f"{where}: seccompProfile {seccomp!r}")
        require(sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem must be read-only")
        require(not any(p.get("hostPort") for p in c.get("ports", [])), f"{where}: uses hostPort")


def check_deployment_contract(objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """What the issue asks of the Deployment, for any value set."""
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    c = container(objects)
    require(spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rolling update maxUnavailable must be 0")
    require(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "readiness probe is not /readyz")
    require(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness probe is not /healthz")
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = int(env_of(objects)["SCOPEGATE_SHUTDOWN_GRACE"].rstrip("s"))
    require(pod["terminationGracePeriodSeconds"] >= sleep + grace,
            "terminationGracePeriodSeconds shorter than preStop sleep + shutdown grace")
    require(c["args"][:2] == ["serve", "--kubernetes"], f"args {c['args']}")
    require({p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 9001, "admin": 9090}, "container ports")
    require("requests" in c["resources"] and "memory" in c["resources"].get("limits", {}), "resources")
    env = env_of(objects)
    require(env["SCOPEGATE_LEADER_ELECTION_LEASE"] == "scopegate-status-writer", "one status-writer Lease per release")
    for var in ("POD_NAME", "POD_NAMESPACE"):
        require(isinstance(env.get(var), dict) and "fieldRef" in env[var], f"{var} must come from the downward API")
    selector = spec["selector"]["matchLabels"]
    require(all(pod_label in spec["template"]["metadata"]["labels"].items() for pod_label in selector.items()),
            "pod labels do not match the selector")
    for tsc in pod["topologySpreadConstraints"]:
        require(tsc["labelSelector"] == {"matchLabels": selector}, "topology spread selects other pods")
    require({t["topologyKey"] for t in pod["topologySpreadConstraints"]} ==
            {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, "spread over zones and nodes")
    require(pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"], "service account")

    service = one(objects, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    require(ports["grpc"]["appProtocol"] == "grpc" and ports["grpc"]["port"] == 9001, "gRPC service port")
    require(ports["admin"]["port"] == 9090, "admin service port")
    require(service["spec"]["selector"] == selector, "service selector")

    pdbs = by_kind(objects, "PodDisruptionBudget")
    require(len(pdbs) == 1 and pdbs[0]["spec"]["selector"]["matchLabels"] == selector, "PodDisruptionBudget")


def rbac_rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """Rules as (apiGroup, resource, verb, resourceName) tuples, so equal
    permissions compare equal however they are grouped or ordered."""
    out = set()
    for rule in rules:
        for group in rule.get("apiGroups", [""]):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames", ["*"]):
                        out.add((group, resource, verb, name))
    return out


def role_permissions(objects: list[dict[str, Any]], sa: tuple[str, str]) -> set[tuple[str, str, str, str, str]]:
    """Everything service account `sa` (namespace, name) may do, as
    (scope, apiGroup, resource, verb, resourceName); scope is "*" for a
    cluster-wide grant, "(own namespace)" for the service account's, else the
    namespace (so manifests for another namespace compare equal)."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    grants = set()
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = {(s.get("namespace"), s["name"]) for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
        if sa not in subjects:
            continue
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role = roles.get((ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"]))
        require(role is not None, f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}")
        scope = "(own namespace)" if ns == sa[0] else ns or "*"
        grants |= {(scope, *rule) for rule in rbac_rule_set(role["rules"])}
    return grants


def check_rbac_matches_manifest(objects: list[dict[str, Any]]) -> None:
    manifest = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    sa_of = lambda objs: next(((o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs if o["kind"] == "ServiceAccount"), None)
    manifest_sa = sa_of(manifest) or (NAMESPACE, RELEASE)
    chart_sa = sa_of(objects)
    require(chart_sa == (NAMESPACE, RELEASE), f"chart service account {chart_sa}")
    want = role_permissions(manifest, manifest_sa)
    got = role_permissions(objects, chart_sa)
    require(want, "manifests/rbac.yaml grants nothing to the service account")
    require(got == want, f"chart RBAC differs from manifests/rbac.yaml: chart only {sorted(got - want)}, manifest only {sorted(want - got)}")


def check_rbac_watch_namespaces(objects: list[dict[str, Any]]) -> None:
    """watchNamespaces: a Role per namespace with the ClusterRole's rules, nothing cluster-wide"""
    manifest = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    cluster_rules = set()
    for o in manifest:
        if o["kind"] == "ClusterRole":
            cluster_rules |= rbac_rule_set(o["rules"])
    got = role_permissions(objects, (NAMESPACE, RELEASE))
    require(not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding"),
            "watchNamespaces must not create cluster-wide RBAC")
    require(all(scope != "*" for scope, *_ in got), "a cluster-wide grant with watchNamespaces")
    for ns in ("shop", "payments"):
        require({tuple(rule) for scope, *rule in got if scope == ns} == cluster_rules,
                f"namespace {ns} does not get exactly the ClusterRole's rules of manifests/rbac.yaml")
    leases = {tuple(rule) for scope, *rule in got if scope == "(own namespace)"}
    require(leases and all(group == "coordination.k8s.io" for group, *_ in leases), "leases role in the release namespace")
    require(env_of(objects)["SCOPEGATE_NAMESPACE"] == "shop,payments", "SCOPEGATE_NAMESPACE")


def check_default_set(objects: list[dict[str, Any]]) -> None:
    """2 replicas, optional objects off, RBAC == manifests/rbac.yaml"""
    require(one(objects, "Deployment")["spec"]["replicas"] == 2, "2 replicas by default")
    require(not by_kind(objects, "HorizontalPodAutoscaler"), "no HPA by default")
    require(not by_kind(objects, "ServiceMonitor") and not by_kind(objects, "NetworkPolicy"), "optional objects off by default")
    require("SCOPEGATE_NAMESPACE" not in env_of(objects), "all namespaces by default")
    check_rbac_matches_manifest(objects)


def check_autoscaling_set(objects: list[dict[str, Any]]) -> None:
    """HorizontalPodAutoscaler owns the replicas"""
    hpa = one(objects, "HorizontalPodAutoscaler")
    deployment = one(objects, "Deployment")
    require("replicas" not in deployment["spec"], "the HPA owns replicas; the Deployment must not set them")
    require(hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}, "HPA target")
    require((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8), "HPA bounds")
    require({m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}, "HPA metrics")


def check_service_monitor(objects: list[dict[str, Any]]) -> None:
    """ServiceMonitor scrapes the Service's admin port /metrics"""
    sm = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    require(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    require(sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), "ServiceMonitor does not select the Service")
    require(sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}, "ServiceMonitor namespace")
    [endpoint] = sm["spec"]["endpoints"]
    require(endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics", "ServiceMonitor endpoint")
    require(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "ServiceMonitor extra labels")


def check_everything_else_set(objects: list[dict[str, Any]]) -> None:
    """NetworkPolicy, OTEL_* env, PDB minAvailable, digest, extraArgs"""
    netpol = one(objects, "NetworkPolicy")
    require(netpol["spec"]["policyTypes"] == ["Ingress", "Egress"], "NetworkPolicy types")
    require(netpol["spec"]["ingress"][0]["ports"] == [{"port": "grpc", "protocol": "TCP"}], "gRPC ingress")
    env = env_of(objects)
    require(env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317", "OTEL endpoint")
    require(env["OTEL_SERVICE_NAME"] == RELEASE and env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc", "OTEL service/protocol")
    require("deployment.environment=prod" in env["OTEL_RESOURCE_ATTRIBUTES"].split(","), "OTEL resource attributes")
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    require(pdb.get("minAvailable") == 1 and "maxUnavailable" not in pdb, "PDB minAvailable instead of maxUnavailable")
    c = container(objects)
    require(c["image"] == "ghcr.io/scopegate/scopegate@sha256:" + "a" * 64, "image digest")
    require("runAsUser" not in one(objects, "Deployment")["spec"]["template"]["spec"]["securityContext"], "runAsUser null is omitted")
    require(c["args"][-1] == "--jwks-refresh-interval=10m", "extraArgs")


def check_envoy_gateway_set(objects: list[dict[str, Any]]) -> None:
    """SecurityPolicy fails closed to the Service with envoy.yaml's headers, ReferenceGrant, Istio provider ConfigMap"""
    service = one(objects, "Service")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    policy = one(objects, "SecurityPolicy")
    require(policy["metadata"]["namespace"] == "shop", "the SecurityPolicy lives in its targets' namespace")
    require(policy["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"}], "targetRefs")
    ext_auth = policy["spec"]["extAuth"]
    require(ext_auth["failOpen"] is False, "extAuth must fail closed")
    require(ext_auth["grpc"]["backendRefs"] == [{"name": service["metadata"]["name"], "namespace": NAMESPACE, "port": grpc_port}],
            f"backendRefs {ext_auth['grpc']['backendRefs']} do not name the gRPC port of the Service")
    require(ext_auth["headersToExtAuth"] == ext_authz_header_lists()["manifests/envoy/envoy.yaml"],
            f"headersToExtAuth {ext_auth.get('headersToExtAuth')} differs from envoy.yaml's allowed_headers")
    grant = one(objects, "ReferenceGrant")
    require(grant["metadata"]["namespace"] == NAMESPACE, "the ReferenceGrant lives in the Service's namespace")
    require(grant["spec"]["from"] == [{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": "shop"}], "ReferenceGrant from")
    require(grant["spec"]["to"] == [{"group": "", "kind": "Service", "name": service["metadata"]["name"]}], "ReferenceGrant to")
    [config_map] = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-istio-provider")]
    providers = yaml.safe_load(config_map["data"]["mesh"])["extensionProviders"]
    notes_mesh = yaml.safe_load(notes_blocks(render(VALUE_SETS["envoy-gateway"]))[0])["meshConfig"]
    require(notes_mesh["extensionProviders"] == providers, "the ConfigMap and NOTES.txt register different providers")


def check_no_optional_wiring(objects: list[dict[str, Any]]) -> None:
    require(not by_kind(objects, "SecurityPolicy") and not by_kind(objects, "ReferenceGrant"), "no SecurityPolicy by default")
    require(not by_kind(objects, "ConfigMap"), "no provider ConfigMap by default")


SET_CHECKS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "defaults": check_default_set,
    "watch-namespaces": check_rbac_watch_namespaces,
    "autoscaling": check_autoscaling_set,
    "service-monitor": check_service_monitor,
    "everything-else": check_everything_else_set,
    "envoy-gateway": check_envoy_gateway_set,
}


def helm_test_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [pod] = [p for p in by_kind(objects, "Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    return pod


def run_helm_test_script(pod: dict[str, Any], binary: str, addr: str) -> subprocess.CompletedProcess[str]:
    """The test Pod's shell script, run here with /bin/sh, `scopegate` on
    PATH being `binary` and SCOPEGATE_ADDR set to `addr`."""
    [c] = pod["spec"]["containers"]
    require(c["command"][1:] == ["sh", "-c"] and len(c["args"]) == 1, f"test command {c['command']} {c['args']}")
    env = {e["name"]: e["value"] for e in c["env"]}
    with tempfile.TemporaryDirectory() as bin_dir:
        os.symlink(os.path.abspath(binary), os.path.join(bin_dir, "scopegate"))
        env.update(SCOPEGATE_ADDR=addr, PATH=f"{bin_dir}:/usr/bin:/bin")
        return subprocess.run(["/bin/sh", "-c", c["args"][0]], env=env, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_helm_test() -> None:
    """The `helm test` Pod: a test hook that checks this release's Service;
    with SCOPEGATE_BIN, its script is run against a real scopegate (a
    decision passes) and against a closed port (no decision fails)."""
    objects = rendered_objects({})
    pod = helm_test_pod(objects)
    service = one(objects, "Service")
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    require(env["SCOPEGATE_ADDR"] == f"{service['metadata']['name']}.{NAMESPACE}.svc:9001", f"test address {env['SCOPEGATE_ADDR']}")
    require(pod["spec"]["restartPolicy"] == "Never", "a test Pod must not restart")
    require(not by_kind(rendered_objects({"tests": {"enabled": False}}), "Pod"), "tests.enabled=false renders no Pod")
    binary = os.environ.get("SCOPEGATE_BIN")
    if not binary:
        return
    port = free_port()
    server = subprocess.Popen(
        [binary, "serve", "--policies", str(ROOT / "manifests/examples/auth0-tokenpolicy.yaml"),
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            require(time.monotonic() < deadline and server.poll() is None, "scopegate serve did not start listening")
            time.sleep(0.1)
        answered = run_helm_test_script(pod, binary, f"127.0.0.1:{port}")
        require(answered.returncode == 0 and "DENY 403 (unknown_host)" in answered.stdout,
                f"against a running scopegate the test must pass with DENY 403 (unknown_host): exit {answered.returncode}\n{answered.stdout}{answered.stderr}")
    finally:
        server.terminate()
        server.wait()
    unanswered = run_helm_test_script(pod, binary, f"127.0.0.1:{port}")
    require(unanswered.returncode != 0 and "FAIL: no decision" in unanswered.stdout,
            f"with nothing listening the test must fail: exit {unanswered.returncode}\n{unanswered.stdout}")


def notes_blocks(rendered: dict[str, str]) -> list[str]:
    """The YAML snippets of NOTES.txt: the blocks that start at column 0."""
    notes = rendered["scopegate/templates/NOTES.txt"]
    return re.findall(r"^(meshConfig:\n(?:[ ].*\n)+|apiVersion: security\.istio\.io.*\n(?:[a-z ].*\n)+)", notes, flags=re.MULTILINE)


def check_notes() -> None:
    objects = rendered_objects({})
    service = one(objects, "Service")
    blocks = notes_blocks(render({}))
    require(len(blocks) == 2, f"NOTES.txt should hold the meshConfig and AuthorizationPolicy snippets, found {len(blocks)}")
    mesh, policy = (yaml.safe_load(b) for b in blocks)
    provider, mcp_provider = mesh["meshConfig"]["extensionProviders"]
    require(mcp_provider["name"] == provider["name"] + "-mcp", "NOTES.txt prints the MCP provider second")
    grpc = provider["envoyExtAuthzGrpc"]
    fqdn = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    require(grpc["service"] == fqdn, f"provider service {grpc['service']} != {fqdn}")
    require(grpc["port"] == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"), "provider port")
    require(grpc["failOpen"] is False and grpc["timeout"], "provider must fail closed with a timeout")
    require(policy["kind"] == "AuthorizationPolicy" and policy["spec"]["action"] == "CUSTOM", "AuthorizationPolicy action CUSTOM")
    require(policy["spec"]["provider"]["name"] == provider["name"], "AuthorizationPolicy provider name")


def check_istio_manifests() -> None:
    """One mesh-config file per tool, each in the shape its tool reads: the
    istiod chart's values (top-level meshConfig) and an IstioOperator overlay
    (spec.meshConfig), registering the same providers as the chart's
    NOTES.txt prints: scopegate and scopegate-mcp (the same service, plus a
    bounded request body), both failing closed to the Service of
    install.yaml; the AuthorizationPolicies name them."""
    values = yaml.safe_load((ROOT / "manifests/istio/istiod-values.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "manifests/istio/istiooperator-overlay.yaml").read_text())
    require(set(values) == {"meshConfig"}, f"istiod-values.yaml: only meshConfig at the top, found {sorted(values)}")
    require(overlay.get("kind") == "IstioOperator" and set(overlay["spec"]) == {"meshConfig"},
            "istiooperator-overlay.yaml: an IstioOperator with only spec.meshConfig")
    require(overlay["spec"]["meshConfig"] == values["meshConfig"], "the two mesh-config files register different providers")
    providers = {p["name"]: p["envoyExtAuthzGrpc"] for p in values["meshConfig"]["extensionProviders"]}
    require(set(providers) == {"scopegate", "scopegate-mcp"}, f"providers {sorted(providers)}")
    notes_mesh = yaml.safe_load(notes_blocks(render({}))[0])["meshConfig"]
    require(notes_mesh["extensionProviders"] == [{"name": name, "envoyExtAuthzGrpc": grpc} for name, grpc in providers.items()],
            "manifests/istio's providers differ from the ones NOTES.txt prints")
    service = one([d for d in yaml.safe_load_all(INSTALL.read_text()) if d], "Service")
    for name, grpc in providers.items():
        require(grpc["service"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local",
                f"{name}: mesh config service FQDN vs install.yaml")
        require(grpc["port"] == 9001 and grpc["failOpen"] is False, f"{name}: mesh config port / failOpen")
    body = providers["scopegate-mcp"].get("includeRequestBodyInCheck", {})
    require(0 < body.get("maxRequestBytes", 0) <= 1 << 20 and body.get("allowPartialMessage") is False,
            "scopegate-mcp: a bounded body, never a partial one")
    require({k: v for k, v in providers["scopegate-mcp"].items() if k != "includeRequestBodyInCheck"} == providers["scopegate"],
            "scopegate-mcp differs from scopegate in more than the body")
    for path, provider in [("authorizationpolicy.yaml", "scopegate"), ("mcp-authorizationpolicy.yaml", "scopegate-mcp"),
                           ("ambient-waypoint.yaml", "scopegate")]:
        for policy in yaml.safe_load_all((ROOT / "manifests/istio" / path).read_text()):
            if policy and policy["kind"] == "AuthorizationPolicy":
                require(policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"]["name"] == provider,
                        f"{path}: {policy['metadata']['name']} must be CUSTOM with provider {provider}")
                require(path != "ambient-waypoint.yaml" or ("targetRefs" in policy["spec"] and "selector" not in policy["spec"]),
                        f"{path}: a waypoint policy needs targetRefs, not a selector (ztunnel ignores CUSTOM)")


def ext_authz_header_lists() -> dict[str, list[str]]:
    """Every list of the request headers a recipe sends in a Check: the
    allowed_headers of the two Envoy bootstraps, the headersToExtAuth of the
    Envoy Gateway SecurityPolicies and of the chart's default values."""
    lists: dict[str, list[str]] = {}
    for path in ["manifests/envoy/envoy.yaml", "examples/mcp/envoy.yaml"]:
        bootstrap = yaml.safe_load((ROOT / path).read_text())
        manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        [ext_authz] = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
        patterns = ext_authz["typed_config"]["allowed_headers"]["patterns"]
        require(all(set(p) == {"exact"} for p in patterns), f"{path}: allowed_headers are exact names")
        lists[path] = [p["exact"] for p in patterns]
    for policy in yaml.safe_load_all((ROOT / "manifests/envoy-gateway/securitypolicy.yaml").read_text()):
        if policy and policy["kind"] == "SecurityPolicy":
            lists[f"SecurityPolicy {policy['metadata']['name']}"] = policy["spec"]["extAuth"]["headersToExtAuth"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    lists["values.yaml envoyGateway.securityPolicy.headersToExtAuth"] = values["envoyGateway"]["securityPolicy"]["headersToExtAuth"]
    return lists


def check_header_lists() -> None:
    """The recipes that filter the Check's headers send the same ones"""
    lists = ext_authz_header_lists()
    first_name, first = next(iter(lists.items()))
    require("authorization" in first and len(set(first)) == len(first), f"{first_name}: {first}")
    for name, headers in lists.items():
        require(headers == first, f"{name} sends {headers}, {first_name} {first}")


@contextlib.contextmanager
def quiet_stderr():
    """Silences file descriptor 2: Helm's Go side logs every template `fail`
    there, and the reject checks expect those."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_schema_rejects(values: dict[str, Any], expected: str) -> None:
    try:
        with quiet_stderr():
            render(values)
    except helm.HelmError as e:
        require(expected in str(e), f"rejected, but the message lacks {expected!r}: {e}")
        return
    raise Failure(f"values {values} were accepted")


def check_lint(values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    require(not problems, f"helm lint --strict: {problems}")


def yamllint_text(text: str, label: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", str(ROOT / ".yamllint.yaml"), "-f", "parsable", "-"],
        input=text, capture_output=True, text=True,
    )
    require(result.returncode == 0, f"yamllint {label}:\n{result.stdout}{result.stderr}")


def check_yamllint_files() -> None:
    manifests = sorted((ROOT / "manifests").rglob("*.yaml"))
    files = [CHART / "Chart.yaml", CHART / "values.yaml", CHART_CRD, *manifests]
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", str(ROOT / ".yamllint.yaml"), "-f", "parsable", *map(str, files)],
        capture_output=True, text=True,
    )
    require(result.returncode == 0, f"yamllint:\n{result.stdout}{result.stderr}")


def check_crd_copies() -> None:
    require(MANIFEST_CRD.exists(), f"{MANIFEST_CRD.relative_to(ROOT)} is missing (run charts/update-crd.sh)")
    require(CHART_CRD.read_bytes() == MANIFEST_CRD.read_bytes(),
            "charts/scopegate/crds/ and manifests/crds/ differ: run charts/update-crd.sh and commit both")
    binary = os.environ.get("SCOPEGATE_BIN")
    if binary:
        printed = subprocess.run([binary, "crd"], capture_output=True, check=True).stdout
        require(printed == CHART_CRD.read_bytes(), f"`{binary} crd` differs from the committed CRD: run charts/update-crd.sh")


def check_install_current() -> None:
    require(INSTALL.exists() and INSTALL.read_text() == install_yaml(),
            "manifests/install.yaml is not the chart rendered with defaults: run charts/render-install.sh and commit it")


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CHART_CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def check_example_policies() -> None:
    """Examples against the CRD's own schema (types, required fields, enums,
    unknown fields); scopegate validate then compiles them."""
    schema = copy.deepcopy(crd_schema())

    def close(node: Any) -> None:  # structural schemas prune unknown fields; be strict here
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema["properties"]["spec"])
    examples = sorted((ROOT / "manifests/examples").glob("*.yaml"))
    require(examples, "no examples")
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "TokenPolicy":
                body = {k: v for k, v in doc.items() if k in ("spec",)}
                errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=str)
                require(not errors, f"{path.name}: {[f'{list(e.path)}: {e.message}' for e in errors]}")
    binary = os.environ.get("SCOPEGATE_BIN")
    if binary:
        result = subprocess.run([binary, "validate", *map(str, examples)], capture_output=True, text=True)
        require(result.returncode == 0, f"scopegate validate: {result.stdout}{result.stderr}")


def docs_yaml_blocks() -> list[tuple[str, str]]:
    """(file name, text) of every ```yaml block in docs/."""
    return [(path.name, textwrap.dedent(block)) for path in sorted((ROOT / "docs").glob("*.md"))
            for _, block in re.findall(r"^([ \t]*)```yaml\n(.*?)^\1```", path.read_text(), flags=re.MULTILINE | re.DOTALL)]


def check_docs_yaml() -> None:
    """Every YAML snippet in docs/ parses; the policy reference's first
    example is the committed example object."""
    blocks = docs_yaml_blocks()
    fences = sum(p.read_text().count("```yaml\n") for p in (ROOT / "docs").glob("*.md"))
    require(blocks and len(blocks) == fences, f"{fences} yaml fences in docs/, {len(blocks)} blocks read")
    for name, block in blocks:
        try:
            list(yaml.safe_load_all(block))
        except yaml.YAMLError as e:
            raise Failure(f"{name}: a yaml block does not parse: {e}") from None
    policies = [yaml.safe_load(b) for n, b in blocks if n == "policies.md" and "kind: TokenPolicy" in b]
    example = yaml.safe_load((ROOT / "manifests/examples/auth0-tokenpolicy.yaml").read_text())
    require(policies and policies[0] == example, "docs/policies.md's first example differs from manifests/examples/auth0-tokenpolicy.yaml")


def docs_helm_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every `helm install|upgrade … charts/scopegate …`
    command in the docs, the READMEs and tests/e2e/kind.sh, continuation lines joined."""
    sources = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", CHART / "README.md", ROOT / "tests/e2e/kind.sh"]
    commands = []
    for path in sources:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if re.match(r"\s*helm (install|upgrade)\b", line) and "charts/scopegate" in line:
                commands.append((path.name, shlex.split(line.split("#")[0])))
    return commands


def check_docs_helm_commands() -> None:
    """Each documented `helm install/upgrade` command's --set values pass the
    schema and render."""
    commands = docs_helm_commands()
    require(len(commands) >= 4, f"only {len(commands)} helm commands found in the docs")
    for name, argv in commands:
        values: dict[str, Any] = {}
        for flag, arg in zip(argv, argv[1:]):
            if flag == "--set":
                values = merge(values, helm.parse_set_string(arg))
            elif flag == "--set-json":
                values = merge(values, helm.parse_set_json(arg))
        try:
            render(values)
        except helm.HelmError as e:
            raise Failure(f"{name}: {' '.join(argv)}: {e}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_docs_envoy_snippet() -> None:
    """The Envoy snippet of docs/install.md, in a minimal bootstrap, passes
    `envoy --mode validate` (real Envoy)."""
    envoy = os.environ.get("SCOPEGATE_ENVOY") or str(Path(sys.executable).parent / "envoy")
    [snippet] = [yaml.safe_load(b) for n, b in docs_yaml_blocks() if n == "install.md" and "http_filters:" in b]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "docs",
        "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": snippet["http_filters"],
    }
    bootstrap = {"static_resources": {
        "listeners": [{"name": "docs", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": snippet["clusters"],
    }}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(bootstrap, f)
        f.flush()
        result = subprocess.run([envoy, "--mode", "validate", "-c", f.name], capture_output=True, text=True)
    require(result.returncode == 0, f"envoy --mode validate:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def check_dockerfile() -> None:
    """hadolint, and the image agrees with the chart: ports, non-root UID."""
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    require(result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}")
    text = (ROOT / "Dockerfile").read_text()
    final_stage = text[text.rindex("\nFROM ") + 1:]
    require(re.search(r"^EXPOSE 9001 9090$", final_stage, re.MULTILINE) is not None, "EXPOSE 9001 9090")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    require(f"USER {values['runAsUser']}:{values['runAsGroup']}" in final_stage, "runtime USER differs from the chart's runAsUser/runAsGroup")
    require("nonroot" in final_stage.splitlines()[0], "runtime base must be a nonroot distroless image")


# === runner ==================================================================

class Runner:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Failure as e:
            self.failed += 1
            print(f"FAIL {name}: {e}")
        except Exception:  # noqa: BLE001 - a crash is a failure with its traceback
            self.failed += 1
            print(f"FAIL {name}: {traceback.format_exc()}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def run_tests() -> int:
    r = Runner()
    r.check("CRD copies identical (charts/ and manifests/)", check_crd_copies)
    r.check("yamllint chart and manifests files", check_yamllint_files)
    r.check("Dockerfile: hadolint, ports and UID match the chart", check_dockerfile)
    for set_name, values in VALUE_SETS.items():
        rendered: list[list[tuple[str, str]]] = []
        r.check(f"[{set_name}] renders", lambda v=values: rendered.append(rendered_documents(render(v))))
        if not rendered:
            continue
        docs = rendered[0]
        objects = [yaml.safe_load(doc) for _, doc in docs]
        r.check(f"[{set_name}] helm lint --strict", lambda v=values: check_lint(v))
        for version in KUBE_VERSIONS:
            r.check(f"[{set_name}] {len(objects)} objects valid for Kubernetes {version} (strict)",
                    lambda o=objects, v=version: validate_with_kubernetes_schemas(o, v))
        r.check(f"[{set_name}] yamllint rendered output",
                lambda d=docs, s=set_name: yamllint_text("".join(f"---\n{doc}\n" for _, doc in d), s))
        r.check(f"[{set_name}] restricted Pod Security", lambda o=objects: check_restricted_pod_security(o))
        r.check(f"[{set_name}] every SCOPEGATE_* variable is read by scopegate", lambda o=objects: check_env_known_to_binary(o))
        r.check(f"[{set_name}] Deployment/Service/PDB contract", lambda o=objects, v=values: check_deployment_contract(o, v))
        r.check(f"[{set_name}] {SET_CHECKS[set_name].__doc__}",
                lambda o=objects, s=set_name: SET_CHECKS[s](o))
        if set_name != "envoy-gateway":
            r.check(f"[{set_name}] no SecurityPolicy or provider ConfigMap", lambda o=objects: check_no_optional_wiring(o))
    r.check("NOTES.txt prints the Istio provider and AuthorizationPolicy", check_notes)
    r.check("helm test Pod checks the release's Service"
            + (" (run against a real scopegate and a closed port)" if os.environ.get("SCOPEGATE_BIN") else ""), check_helm_test)
    rejects = [
        ({"replicaCount": 0}, "/replicaCount"),
        ({"replicas": 3}, "'replicas' not allowed"),
        ({"watchNamespaces": "shop"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Shop_1"]}, "/watchNamespaces/0"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"runAsUser": 0}, "/runAsUser"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"otel": {"protocol": "zipkin"}}, "/otel/protocol"),
        ({"jwks": {"fetchTimeout": "five seconds"}}, "/jwks/fetchTimeout"),
        ({"service": {"grpcPort": 70000}}, "/service/grpcPort"),
        ({"istio": {"timeout": "500ms"}}, "/istio/timeout"),
        ({"envoyGateway": {"securityPolicy": {"enabled": True}}}, "needs envoyGateway.securityPolicy.targetRefs"),
        ({"envoyGateway": {"securityPolicy": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Service", "name": "x"}]}}},
         "/envoyGateway/securityPolicy/targetRefs/0/kind"),
        ({"envoyGateway": {"securityPolicy": {"timeout": "1.5s"}}}, "/envoyGateway/securityPolicy/timeout"),
        ({"envoyGateway": {"securityPolicy": {"headersToExtAuth": [":authority"]}}},
         "/envoyGateway/securityPolicy/headersToExtAuth/0"),
        ({"tests": {"hosts": "x"}}, "'hosts' not allowed"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "must not exceed autoscaling.maxReplicas"),
        ({"terminationGracePeriodSeconds": 5}, "must be at least preStopSleepSeconds + shutdownGraceSeconds"),
        ({"podDisruptionBudget": {"maxUnavailable": "50"}}, "/podDisruptionBudget/maxUnavailable"),
    ]
    for values, expected in rejects:
        r.check(f"rejects {json.dumps(values)}", lambda v=values, e=expected: check_schema_rejects(v, e))
    r.check("manifests/install.yaml is current", check_install_current)
    r.check("docs/: YAML snippets parse, policy example is the committed one", check_docs_yaml)
    r.check("docs/: every helm install/upgrade command's --set values render", check_docs_helm_commands)
    envoy = os.environ.get("SCOPEGATE_ENVOY") or str(Path(sys.executable).parent / "envoy")
    if os.access(envoy, os.X_OK):
        r.check("docs/install.md Envoy snippet passes envoy --mode validate", check_docs_envoy_snippet)
    else:
        print(f"skip docs/install.md Envoy snippet (no Envoy at {envoy}; .ci/install-tools.sh installs it)")
    r.check("manifests/istio: providers match the chart's Service and NOTES.txt, policies name them", check_istio_manifests)
    r.check("envoy.yaml, examples/mcp/envoy.yaml, manifests/envoy-gateway and the chart send the same Check headers",
            check_header_lists)
    r.check("examples are valid TokenPolicies (CRD schema"
            + (", scopegate validate)" if os.environ.get("SCOPEGATE_BIN") else ")"), check_example_policies)
    print(f"chart tests: {r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["render-install"]:
        INSTALL.write_text(install_yaml())
        print(f"wrote {INSTALL.relative_to(ROOT)}")
        return 0
    if len(argv) == 2 and argv[0] == "render":
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        for set_name, values in VALUE_SETS.items():
            docs = rendered_documents(render(values))
            (out / f"{set_name}.yaml").write_text("".join(f"---\n{doc}\n" for _, doc in docs))
            print(out / f"{set_name}.yaml")
        return 0
    if argv == ["test"]:
        return run_tests()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
