"""The deploy files (`deploy/k8s`, `deploy/compose`) are valid and agree with the app.

Offline, as CI runs them:
- every Kubernetes manifest is validated in strict mode (unknown fields are errors) against
  the API schemas bundled by `kubernetes-validate` (1.37.0 when written: Kubernetes 1.33
  and the newest it ships, 1.37); `kubectl kustomize` (v1.32.4, kustomize v5.5.0 here)
  renders the kustomization when kubectl is installed;
- the compose file is checked by `docker compose config` (the v2 plugin) when present,
  else `docker-compose config` (Debian's 1.29.2, what `make tools` installs; `config`
  needs no Docker engine), and HAProxy (2.6.12) checks `haproxy.cfg` with `haproxy -c`;
- and the figures the files must share with the app are checked against the app itself:
  the grace periods against the drain setting plus the app's own teardown constants, the
  probe paths against the app's routes, the autoscaling metric against what
  `app.metrics` renders, the settings and the agents file against the app's loaders.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from app import lifecycle, server_guard
from app.agents import Agents
from app.main import STORE_FLUSH_SECONDS, create_app
from app.metrics import Metrics
from app.settings import Settings, SettingsError, load_settings
from tests.conftest import make_settings
from tests.haproxy import haproxy_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
HAPROXY_CFG = COMPOSE_DIR / "haproxy.cfg"
PROMETHEUS_YML = COMPOSE_DIR / "prometheus.yml"

NAME = "twilio-realtime-bridge"
LABELS = {"app.kubernetes.io/name": NAME}
#: The manifests `kubectl apply -k` must not apply (see kustomization.yaml).
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "prometheus-adapter.yaml"}
#: The oldest Kubernetes the manifests are meant for, and the newest the package knows.
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
#: What the app needs after the drain before it exits (README "Rolling deploys"): ending
#: the remaining calls, the server's teardown, flushing the pending call records.
TEARDOWN_S = lifecycle._TEARDOWN_S + server_guard.SHUTDOWN_GRACE_S + STORE_FLUSH_SECONDS
#: Settings that are uvicorn's, not the app's (uvicorn reads them from the environment).
UVICORN_ENV = {"FORWARDED_ALLOW_IPS"}
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
METRIC = "bridge_calls_active"


# -- reading the files -------------------------------------------------------------------


@cache
def documents(path: Path) -> tuple[dict[str, Any], ...]:
    with path.open(encoding="utf-8") as f:
        return tuple(doc for doc in yaml.safe_load_all(f) if doc is not None)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def find(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc
        for path in manifest_files()
        for doc in documents(path)
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return find("Deployment", NAME)


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1, "one process per pod: one container"
    found: dict[str, Any] = containers[0]
    return found


def container_port(port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    for entry in container()["ports"]:
        if port in (entry["containerPort"], entry.get("name")):
            number: int = entry["containerPort"]
            return number
    raise AssertionError(f"no container port {port!r}")


def pod_env() -> dict[str, str]:
    """The container's environment as the app sees it: the ConfigMap's values, then the
    container's own `env` (which wins over `envFrom`)."""
    env: dict[str, str] = {}
    for source in container()["envFrom"]:
        if "configMapRef" in source:
            env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container().get("env", []):
        assert "value" in entry, f"{entry['name']}: a plain value expected"
        env[entry["name"]] = entry["value"]
    return env


def secret_values() -> dict[str, str]:
    values: dict[str, str] = find("Secret", NAME)["stringData"]
    return values


def agents_toml() -> str:
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "agents")
    config_map = find("ConfigMap", volume["configMap"]["name"])
    text: str = config_map["data"]["agents.toml"]
    return text


def load_with(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """The app's settings from exactly `env` (nothing from the real environment or a
    `.env`)."""
    for key in list(os.environ):
        if key.upper() in SETTING_NAMES:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(_env_file=None)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def seconds(value: str | int | float) -> float:
    """A compose duration (`630s`, `10m30s`, as v1 and v2 print them) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = _DURATION.findall(value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


# -- Kubernetes: the schemas -------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_each_manifest_validates_against_the_kubernetes_api(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            name = f"{doc['kind']} {doc['metadata']['name']}"
            pytest.fail(f"{path.name}: {name}: {where}: {e.message}")


def test_the_kustomization_lists_every_manifest_but_the_templates() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource listed twice"
    expected = {p.name for p in manifest_files()} - NOT_IN_KUSTOMIZATION
    assert set(listed) == expected
    assert all((K8S / name).is_file() for name in NOT_IN_KUSTOMIZATION)
    # No namespace anywhere: `kubectl apply -n` or an overlay sets it.
    assert "namespace" not in kustomization
    for name in listed:
        for doc in documents(K8S / name):
            assert "namespace" not in doc["metadata"], f"{name}: {doc['kind']} sets a namespace"


def test_kustomize_renders_what_the_files_hold() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the schema checks above still ran)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rendered = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    (kustomization,) = documents(K8S / "kustomization.yaml")
    expected = {
        (d["kind"], d["metadata"]["name"])
        for name in kustomization["resources"]
        for d in documents(K8S / name)
    }
    assert names == expected
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


# -- Kubernetes: what the manifests must agree on -----------------------------------------


def test_the_grace_period_covers_the_drain_and_the_teardown() -> None:
    assert TEARDOWN_S == 20  # README "Rolling deploys": 5 s calls, 5 s server, 10 s records
    drain = float(pod_env()["SHUTDOWN_DRAIN_SECONDS"])
    grace = pod_spec()["terminationGracePeriodSeconds"]
    # The preStop sleep: the balancers in front learn the pod is gone before it stops.
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 5 <= pre_stop <= 30
    assert grace >= pre_stop + drain + TEARDOWN_S
    # The one figure the README and the Dockerfile tell operators.
    for path in (ROOT / "README.md", ROOT / "Dockerfile"):
        told = re.findall(r"terminationGracePeriodSeconds: (\d+)", path.read_text())
        assert told, f"{path.name} no longer names terminationGracePeriodSeconds"
        assert {int(t) for t in told} == {grace}, path.name


def test_the_probes_ask_the_apps_own_health_routes_on_its_port() -> None:
    routes = {
        (getattr(route, "path", None), method)
        for route in create_app(make_settings()).api.routes
        for method in getattr(route, "methods", None) or ()
    }
    c = container()
    env = pod_env()
    assert int(env["PORT"]) == container_port("http") == 8000
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.M)
    ready, live, startup = c["readinessProbe"], c["livenessProbe"], c["startupProbe"]
    for probe, path in ((ready, "/readyz"), (live, "/healthz"), (startup, "/healthz")):
        assert probe["httpGet"]["path"] == path
        assert (path, "GET") in routes
        assert container_port(probe["httpGet"]["port"]) == 8000
    # A draining or full pod leaves the endpoints at its first 503...
    assert (ready["periodSeconds"], ready["failureThreshold"]) == (2, 1)
    # ...but liveness never kills a busy pod: 30 s of no answer, 4 s each.
    assert live["periodSeconds"] * live["failureThreshold"] >= 30
    assert live["timeoutSeconds"] >= 4


def test_the_rollout_starts_a_pod_before_it_drains_one() -> None:
    spec = deployment()["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert "replicas" not in spec, "the HPA owns the replica count"


def test_the_pod_runs_unprivileged_as_the_images_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user, "the Dockerfile's USER uid:gid"
    uid, gid = int(user[1]), int(user[2])
    pod, c = pod_spec(), container()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (
        uid,
        gid,
        gid,
    )
    assert uid == 10001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    own = c["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    assert not own.get("privileged", False)
    # With a read-only root, /data (the image's one writable place) and /tmp are volumes.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/data", "/tmp"):
        assert path in mounts, f"nothing mounted at {path}"
        assert not mounts[path].get("readOnly", False)
        assert "emptyDir" in volumes[mounts[path]["name"]]


def test_the_pod_reserves_a_core_and_is_never_cpu_throttled() -> None:
    resources = container()["resources"]
    assert resources["requests"]["cpu"] in ("1", "1000m")
    assert "cpu" not in resources.get("limits", {}), "a CPU limit throttles the event loop"
    mib = {"Mi": 1, "Gi": 1024}

    def size(text: str) -> int:
        match = re.fullmatch(r"(\d+)(Mi|Gi)", text)
        assert match, f"a size in Mi or Gi: {text!r}"
        return int(match[1]) * mib[match[2]]

    assert size(resources["limits"]["memory"]) >= size(resources["requests"]["memory"])


def test_the_service_and_the_budget_select_the_pods() -> None:
    spec = deployment()["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] == LABELS
    assert LABELS.items() <= pod_labels.items()
    service = find("Service", NAME)["spec"]
    assert service["selector"].items() <= pod_labels.items()
    assert service["type"] == "ClusterIP"
    assert service.get("sessionAffinity", "None") == "None"
    (port,) = service["ports"]
    assert port["port"] == 80
    assert container_port(port["targetPort"]) == 8000
    budget = find("PodDisruptionBudget", NAME)["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["maxUnavailable"] == 1
    for path in manifest_files():
        if path.name == "prometheus-adapter.yaml":
            continue
        for doc in documents(path):
            assert LABELS.items() <= doc["metadata"]["labels"].items(), path.name


def test_the_autoscaler_scales_the_deployment_on_a_gauge_the_app_exports() -> None:
    hpa = find("HorizontalPodAutoscaler", NAME)["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment()["metadata"]["name"],
    )
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    by_type = {m["type"]: m for m in hpa["metrics"]}
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] == METRIC
    assert pods["target"]["type"] == "AverageValue"
    per_pod = float(pods["target"]["averageValue"])
    # A real series of the app, and a gauge (an average of a counter would mean nothing).
    families = {f.name: f.type for f in text_string_to_metric_families(Metrics().render().decode())}
    assert families.get(METRIC) == "gauge"
    assert f"| `{METRIC}` | gauge |" in (ROOT / "README.md").read_text()
    # Headroom: the target is under what a pod may take before it turns calls away.
    assert per_pod < int(pod_env()["MAX_CONCURRENT_CALLS"])
    cpu = by_type["Resource"]["resource"]
    assert cpu["name"] == "cpu"
    assert cpu["target"] == {"type": "Utilization", "averageUtilization": 70}
    # Scaling down makes pods drain: no faster than the drain itself.
    down = hpa["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= float(pod_env()["SHUTDOWN_DRAIN_SECONDS"])
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_the_adapter_rule_serves_the_autoscalers_metric() -> None:
    (config_map,) = documents(K8S / "prometheus-adapter.yaml")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    (rule,) = [r for r in config["rules"] if METRIC in r["seriesQuery"]]
    assert rule["seriesQuery"] == f'{METRIC}{{namespace!="",pod!=""}}'
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    # The name the custom metrics API serves: the rule's `as`, with its `matches` applied.
    name = rule.get("name", {})
    exposed = re.sub(
        name.get("matches", ".*"), re.sub(r"\$(\d)", r"\\\1", name.get("as", "$0")), METRIC
    )
    hpa = find("HorizontalPodAutoscaler", NAME)["spec"]
    assert exposed == next(m["pods"]["metric"]["name"] for m in hpa["metrics"] if "pods" in m)
    assert rule["metricsQuery"] == "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"


def test_the_pod_names_the_config_it_is_given() -> None:
    c = container()
    refs = {next(iter(s)): next(iter(s.values()))["name"] for s in c["envFrom"]}
    assert find("ConfigMap", refs["configMapRef"])
    assert find("Secret", refs["secretRef"])
    assert not any(next(iter(s.values())).get("optional") for s in c["envFrom"])
    mount = next(m for m in c["volumeMounts"] if m["name"] == "agents")
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "agents")
    (item,) = volume["configMap"]["items"]
    assert pod_env()["AGENTS_FILE"] == f"{mount['mountPath']}/{item['path']}"
    assert mount["readOnly"] is True


def test_the_settings_and_the_agents_file_load_with_the_apps_own_loaders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env, secrets = pod_env(), secret_values()
    refs = set(re.findall(r"\$\{(\w+)", agents_toml()))
    assert set(env) <= SETTING_NAMES | UVICORN_ENV, "a typo is silently ignored"
    assert set(secrets) <= SETTING_NAMES | refs
    assert refs <= set(secrets), "every ${VAR} of the agents file comes from the Secret"
    (tmp_path / "agents.toml").write_text(agents_toml(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    real = {
        **env,
        "AGENTS_FILE": str(tmp_path / "agents.toml"),
        "DATABASE_URL": secrets["DATABASE_URL"],
        "TOOLS_SIGNING_SECRET": "a-signing-secret-0123456789",
    }
    settings = load_with(monkeypatch, real)
    assert settings.shutdown_drain_seconds == float(env["SHUTDOWN_DRAIN_SECONDS"])
    assert settings.max_concurrent_calls == int(env["MAX_CONCURRENT_CALLS"])
    assert str(settings.public_base_url).startswith("https://")
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().startswith("postgresql://")
    agents = Agents.from_settings(settings, {ref: "a-token-0123456789" for ref in refs})
    assert agents.configured
    assert agents.pick("+15550100") == "sales"
    assert agents.pick("+15559999") == "default"
    assert agents.warnings == []
    # The template can't run as it is: its placeholders are refused at start.
    with pytest.raises(SettingsError, match="TWILIO_ACCOUNT_SID"):
        load_with(monkeypatch, {**real, **secrets})


# -- Compose -----------------------------------------------------------------------------


@cache
def compose_command() -> tuple[str, ...] | None:
    """`docker compose` (v2) when the plugin is there, else docker-compose (v1)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return (docker, "compose")
    v1 = shutil.which("docker-compose")
    return (v1,) if v1 else None


#: A .env that tries to set what the compose file fixes: the file's values must win.
CONFLICTING_ENV = (
    "PUBLIC_BASE_URL=https://bridge.example.com\n"
    "DATABASE_URL=sqlite:////data/calls.db\n"
    "PORT=9000\n"
    "SHUTDOWN_DRAIN_SECONDS=5\n"
    "FORWARDED_ALLOW_IPS=*\n"
)


def compose_config(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (`make tools`)")
    env_file = tmp_path / "bridge.env"
    env_file.write_text(CONFLICTING_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env["BRIDGE_ENV_FILE"] = str(env_file)
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def rendered_compose(tmp_path: Path) -> dict[str, Any]:
    out = compose_config(tmp_path)
    assert out.returncode == 0, out.stderr
    rendered: dict[str, Any] = yaml.safe_load(out.stdout)
    return rendered


def env_dict(environment: dict[str, Any] | list[str]) -> dict[str, str]:
    if isinstance(environment, dict):
        return {k: str(v) for k, v in environment.items()}
    return dict(item.split("=", 1) for item in environment)


def volume_targets(volumes: list[str | dict[str, Any]]) -> dict[str, str | None]:
    """Container path -> source (None: an anonymous volume), short or long syntax."""
    targets: dict[str, str | None] = {}
    for volume in volumes:
        if isinstance(volume, dict):
            targets[volume["target"]] = volume.get("source")
        else:
            parts = volume.split(":")
            targets[parts[1] if len(parts) > 1 else parts[0]] = parts[0] if len(parts) > 1 else None
    return targets


def test_the_compose_file_is_valid(tmp_path: Path) -> None:
    out = compose_config(tmp_path, "-q")
    assert out.returncode == 0, out.stderr
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert "version" not in raw, "the Compose Specification has no version key"
    assert raw["services"]["app"]["env_file"] == ["${BRIDGE_ENV_FILE:-../../.env}"]


def test_the_compose_replicas_drain_and_share_postgresql(tmp_path: Path) -> None:
    services = rendered_compose(tmp_path)["services"]
    app = services["app"]
    env = env_dict(app["environment"])
    # What the compose file fixes wins over the .env.
    assert env["DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:" in env["DATABASE_URL"]
    assert env["PORT"] == "8000"
    drain = float(env["SHUTDOWN_DRAIN_SECONDS"])
    assert drain == 600
    assert seconds(app["stop_grace_period"]) >= drain + TEARDOWN_S
    assert app["deploy"]["replicas"] >= 2
    assert "ports" not in app, "replicas are reached through HAProxy only"
    assert app["read_only"] is True
    assert any(t == "/tmp" or t.startswith("/tmp:") for t in app["tmpfs"])
    assert volume_targets(app["volumes"]) == {"/data": None}
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_only_the_balancer_is_trusted_for_forwarded_headers(tmp_path: Path) -> None:
    rendered = rendered_compose(tmp_path)
    services = rendered["services"]
    trusted = env_dict(services["app"]["environment"])["FORWARDED_ALLOW_IPS"]
    (network,) = services["haproxy"]["networks"]
    address = services["haproxy"]["networks"][network]["ipv4_address"]
    assert trusted == address
    (subnet,) = (c["subnet"] for c in rendered["networks"][network]["ipam"]["config"])
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    assert network in services["app"]["networks"]


def test_no_deploy_file_trusts_every_peer() -> None:
    assignment = re.compile(r"FORWARDED_ALLOW_IPS[\"']?\s*[:=]\s*[\"']?([^\"'\s#]+)")
    found: dict[str, list[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".cfg", ".env", ".json"):
            for value in assignment.findall(path.read_text(encoding="utf-8")):
                found.setdefault(str(path.relative_to(DEPLOY)), []).append(value)
    assert found.keys() >= {"k8s/configmap.yaml", "compose/compose.yaml"}
    for where, values in found.items():
        for value in values:
            assert "*" not in value, where
            for part in value.split(","):
                ipaddress.ip_network(part.strip(), strict=False)  # an address or a network


def test_haproxy_accepts_its_config_and_balances_the_compose_replicas(tmp_path: Path) -> None:
    text = HAPROXY_CFG.read_text()
    template = re.search(r"^\s*server-template (\w+) (\d+) (\w+):(\d+) ", text, re.M)
    assert template, "haproxy.cfg: the server-template over Docker's DNS"
    services = rendered_compose(tmp_path)["services"]
    assert template[3] in services, "server-template names a compose service"
    assert int(template[4]) == int(env_dict(services[template[3]]["environment"])["PORT"])
    # A slot per replica, twice over: old and new containers side by side in a rolling restart.
    assert int(template[2]) >= 2 * services["app"]["deploy"]["replicas"], "2 slots per replica"
    assert re.search(r"^\s*option httpchk GET /readyz$", text, re.M)
    # Stopping the stack stops HAProxy first: its soft stop lets the live calls finish.
    grace = seconds(services["app"]["stop_grace_period"])
    assert seconds(services["haproxy"]["stop_grace_period"]) >= grace
    (bind,) = re.findall(r"^\s*bind :(\d+)$", text, re.M)
    published = services["haproxy"]["ports"][0]
    target = published["target"] if isinstance(published, dict) else published.split(":")[-1]
    assert int(target) == int(bind)
    mounts = volume_targets(services["haproxy"]["volumes"])
    assert Path(str(mounts["/usr/local/etc/haproxy/haproxy.cfg"])) == HAPROXY_CFG
    out = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_scrapes_every_replica_itself(tmp_path: Path) -> None:
    services = rendered_compose(tmp_path)["services"]
    mounts = volume_targets(services["prometheus"]["volumes"])
    assert Path(str(mounts["/etc/prometheus/prometheus.yml"])) == PROMETHEUS_YML
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["app"] and "app" in services
    assert sd["type"] == "A"
    assert sd["port"] == int(env_dict(services["app"]["environment"])["PORT"])
    assert "static_configs" not in job, "not the balancer: one series per process"
