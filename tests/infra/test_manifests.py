"""infra/: the compose file, the Kubernetes manifests and the env example parse, and say what the guide says.

No Docker or cluster here: these read the YAML (PyYAML) and hold it to the service's own settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from backend.core.config import Settings

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
SETTINGS = set(Settings.model_fields)
# read by something other than the settings: CUDA itself
NOT_SETTINGS = {"CUDA_VISIBLE_DEVICES"}
# env.example also feeds compose's ${...}: the postgres service's variables and the image name
COMPOSE_ONLY = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "KAVACH_IMAGE"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{name}:{doc['kind']}/{doc['metadata']['name']}", doc) for name, doc in k8s_docs()
            if doc["kind"] in ("Deployment", "StatefulSet", "Job")]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in k8s_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (INFRA / "env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def is_kavach(service: dict[str, Any]) -> bool:
    return "kavach" in str(service.get("image", "")) or "build" in service


# -- compose --------------------------------------------------------------------------------------

def test_compose_has_the_api_redis_postgres_and_a_worker_per_gpu() -> None:
    services = compose()["services"]
    assert {"api", "redis", "postgres"} <= services.keys()
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert len(workers) >= 2, list(services)
    gpus = []
    for name, worker in workers.items():
        assert worker["command"] == ["kavach", "worker"], name
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
        assert len(devices[0]["device_ids"]) == 1, name  # pinned to one GPU
        gpus.append(devices[0]["device_ids"][0])
        # the one GPU the container sees is its device 0, whichever the host's number
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0", name
    assert len(set(gpus)) == len(gpus), f"two workers share a GPU: {gpus}"


def test_compose_api_is_checked_on_readyz_and_the_servers_persist() -> None:
    services = compose()["services"]
    api = services["api"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["command"][:2] == ["uvicorn", "backend.main:app"]
    assert "8000:8000" in api["ports"]
    redis, postgres = services["redis"], services["postgres"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert postgres["image"].startswith("postgres:16")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name in ("redis", "postgres"):  # the servers' data are named volumes
        assert services[name]["volumes"][0].split(":")[0] in compose()["volumes"], name


def test_compose_api_and_workers_share_storage_and_run_unprivileged() -> None:
    services = compose()["services"]
    storage = env_example()["STORAGE_DIR"]
    kavach = {name: s for name, s in services.items() if is_kavach(s)}
    assert kavach.keys() == {name for name in services if name == "api" or name.startswith("worker")}
    for name, service in kavach.items():
        assert f"storage:{storage}" in service["volumes"], name
        assert service["env_file"] == ".env", name
        assert not service.get("privileged", False), name
        assert service["cap_drop"] == ["ALL"], name
    for name, service in services.items():
        assert not service.get("privileged", False), name
    assert "storage" in compose()["volumes"]


def test_env_names_are_settings() -> None:
    example = env_example()
    assert example["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert example["REDIS_URL"] == "redis://redis:6379/0"
    assert "METRICS_TOKEN" in example
    assert set(example) - COMPOSE_ONLY <= SETTINGS, set(example) - COMPOSE_ONLY - SETTINGS
    for name, service in compose()["services"].items():
        if is_kavach(service):
            assert set(service.get("environment", {})) <= SETTINGS | NOT_SETTINGS, name
    # and their values are valid settings
    Settings(_env_file=None, **{k: v for k, v in example.items() if k not in COMPOSE_ONLY})


# -- Kubernetes -----------------------------------------------------------------------------------

def test_every_workload_has_resource_limits_and_none_is_privileged() -> None:
    found = workloads()
    kinds = {doc["kind"] for _, doc in found}
    assert {"Deployment", "StatefulSet", "Job"} <= kinds
    for name, doc in found:
        spec = pod_spec(doc)
        for container in spec["containers"]:
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= limits.keys(), name
            assert not container.get("securityContext", {}).get("privileged", False), name
        assert doc["metadata"]["namespace"] == "kavach", name


def test_worker_deployment_takes_one_gpu_per_pod_and_time_to_stop() -> None:
    worker = find("Deployment", "kavach-worker")
    spec = pod_spec(worker)
    (container,) = spec["containers"]
    assert container["args"] == ["kavach", "worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["spec"]["replicas"] >= 2
    assert spec["terminationGracePeriodSeconds"] >= 60
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0  # no spare GPU to surge onto
    assert "readinessProbe" not in container and "livenessProbe" not in container  # explained in the file
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims["storage"] == "kavach-storage"
    assert mounts["storage"] == find("ConfigMap", "kavach-config")["data"]["STORAGE_DIR"]


def test_api_deployment_probes_and_service() -> None:
    api = find("Deployment", "kavach-api")
    (container,) = pod_spec(api)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][:2] == ["uvicorn", "backend.main:app"]
    port = container["ports"][0]
    service = find("Service", "kavach-api")
    assert service["spec"]["selector"] == api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["storage"] == find("ConfigMap", "kavach-config")["data"]["STORAGE_DIR"]


def test_servers_storage_and_migrations() -> None:
    redis = find("StatefulSet", "redis")
    args = pod_spec(redis)["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"]
    postgres = find("StatefulSet", "postgres")
    assert pod_spec(postgres)["containers"][0]["image"].startswith("postgres:16")
    assert postgres["spec"]["volumeClaimTemplates"]
    for name in ("redis", "postgres"):
        service = find("Service", name)
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
    assert find("PersistentVolumeClaim", "kavach-storage")["spec"]["accessModes"] == ["ReadWriteMany"]
    migrate = find("Job", "kavach-migrate")
    assert pod_spec(migrate)["containers"][0]["args"] == ["python", "-m", "backend.migrate"]


def test_k8s_env_names_are_settings_and_valid() -> None:
    config = find("ConfigMap", "kavach-config")["data"]
    secret = find("Secret", "kavach-secrets")["stringData"]
    assert {"DATABASE_URL", "METRICS_TOKEN"} <= secret.keys()
    assert secret["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "DATABASE_URL" not in config and "METRICS_TOKEN" not in config  # secrets stay in the Secret
    assert set(config) | set(secret) <= SETTINGS, (set(config) | set(secret)) - SETTINGS
    Settings(_env_file=None, **config, **secret)
    for name, doc in workloads():
        for container in pod_spec(doc)["containers"]:
            if "kavach" not in container["image"]:
                continue
            # args, never command: command would replace the image's entrypoint (tini, PID 1)
            assert "command" not in container and container["args"], name
            names = {e["name"] for e in container.get("env", [])}
            assert names <= SETTINGS | NOT_SETTINGS, (name, names - SETTINGS - NOT_SETTINGS)
            refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
            assert refs == {"kavach-config", "kavach-secrets"}, name


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


def test_dockerfile_pins_the_projects_torch() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    pins = re.search(r"pip install torch==(\S+) torchvision==(\S+)", dockerfile)
    torch = re.search(r"^TORCH_VERSION := (\S+)$", makefile, re.MULTILINE)
    vision = re.search(r"^TORCHVISION_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert pins and torch and vision, "no torch pin found in infra/Dockerfile or the Makefile"
    assert pins.groups() == (torch.group(1), vision.group(1)), "infra/Dockerfile and the Makefile pin different torch builds"
    assert "pip install '.[web]'" in dockerfile
