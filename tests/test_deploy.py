"""What ships: the Dockerfile, the kustomize manifests for OpenShift, the CI/CD workflows.

Every check runs a real offline tool from the project's venv (hadolint, kubectl
kustomize, kubernetes-validate, check-jsonschema, yamllint, actionlint; checkov from its
own venv) or asserts a property of what those tools render, so that breaking the
manifest, the image or a workflow fails a test. A missing tool skips on a laptop and
fails in CI (the ``CI`` environment variable).

The last test starts the image's own command the way OpenShift runs it: a random UID in
group 0, a read-only application tree, an unwritable HOME and only /tmp writable.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OVERLAYS_DIR = ROOT / "k8s" / "overlays"
OVERLAYS = sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())
ROUTE_SCHEMA = ROOT / "schemas" / "route.openshift.io_v1_route.json"
MONITORING_SCHEMAS = {kind: ROOT / "schemas" / f"monitoring.coreos.com_v1_{kind.lower()}.json"
                      for kind in ("ServiceMonitor", "PrometheusRule")}
# Kinds kubernetes-validate has no schema for: each has one under schemas/.
CUSTOM_KINDS = {("Route", "route.openshift.io/v1"), ("ServiceMonitor", "monitoring.coreos.com/v1"),
                ("PrometheusRule", "monitoring.coreos.com/v1")}
# OpenShift 4.20 runs Kubernetes 1.33 (kubernetes-validate ships schemas 1.25 to 1.37).
K8S_VERSION = "1.33.0"
APP = "credit-risk-api"
SERVER_CMD = ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
# A UID from the range OpenShift gives a namespace; it exists nowhere in /etc/passwd.
OPENSHIFT_UID = 1000770000


# --------------------------------------------------------------------------- helpers

def tool(name: str) -> Path:
    """A tool from the venv beside this Python; skip without it, or fail in CI."""
    path = BIN / name
    if path.is_file():
        return path
    message = f"{name} is not in {BIN}: run `make install-dev`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(*cmd: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a command in the repo root; output captured as text, never raising."""
    return subprocess.run([str(c) for c in cmd], cwd=kwargs.pop("cwd", ROOT), text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def ok(result: subprocess.CompletedProcess) -> str:
    """The stdout of a command that must have succeeded, else its whole output as failure."""
    assert result.returncode == 0, (
        f"{shlex.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def kustomize(path: Path) -> str:
    """``kubectl kustomize`` of one kustomization directory (the venv's kubectl)."""
    return ok(run(tool("kubectl"), "kustomize", path))


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    """The rendered objects of one kind (and name)."""
    return [d for d in docs
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str = APP) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a matchLabels selector (non-empty) selects an object with these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "m": 1e-3}


def quantity(text: str | int) -> float:
    """A Kubernetes resource quantity (``250m``, ``512Mi``, ``2``) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, f"not a quantity: {text!r}"
    return float(match[1]) * _UNITS.get(match[2], 1)


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """Each overlay rendered once: the YAML file and its parsed objects."""
    out = tmp_path_factory.mktemp("rendered")
    result = {}
    for name in OVERLAYS:
        text = kustomize(OVERLAYS_DIR / name)
        path = out / f"{name}.yaml"
        path.write_text(text)
        result[name] = (path, [d for d in yaml.safe_load_all(text) if d])
    return result


def deployments(rendered) -> list[tuple[str, dict]]:
    return [(name, d) for name, (_, docs) in rendered.items() for d in find(docs, "Deployment")]


# --------------------------------------------------------------------------- Dockerfile

def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile as {stage name: [(INSTRUCTION, arguments)]}, continuations joined."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    name = None
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            name = match[1] if match else f"stage{len(stages)}"
            stages[name] = []
        if name is not None:
            stages[name].append((instruction, args.strip()))
    return stages


def dockerfile_args() -> dict[str, str]:
    """The global ARGs (before the first FROM) with their defaults."""
    args = {}
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.upper().startswith("FROM "):
            break
        if raw.upper().startswith("ARG "):
            name, _, default = raw[4:].strip().partition("=")
            args[name] = default
    return args


def instructions(stage: list[tuple[str, str]], kind: str) -> list[str]:
    return [args for instruction, args in stage if instruction == kind]


def api_command() -> list[str]:
    """The api stage's CMD, which must be in JSON (exec) form."""
    return json.loads(instructions(dockerfile_stages()["api"], "CMD")[-1])


def api_env() -> dict[str, str]:
    """ENV of the api image: its own stage's and the base stage's it builds on."""
    env = {}
    stages = dockerfile_stages()
    for args in instructions(stages["base"], "ENV") + instructions(stages["api"], "ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def test_dockerfile_passes_hadolint_without_any_finding():
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_image_builds_from_ubi9_python311_with_trainer_and_api_targets():
    stages = dockerfile_stages()
    assert {"trainer", "api"} <= set(stages)
    assert list(stages)[-1] == "api", "api must be the last stage: the default build target"
    # The base is an ARG (tools/image_check.sh builds on a stand-in where no registry is
    # reachable) whose default is the real UBI image; no `# syntax=` line, which would make
    # BuildKit fetch a frontend image before the first stage.
    first_from = instructions(next(iter(stages.values())), "FROM")[0]
    assert first_from.startswith("${BASE_IMAGE} ")
    assert dockerfile_args()["BASE_IMAGE"].startswith("registry.access.redhat.com/ubi9/python-311:")
    assert not re.search(r"^#\s*syntax\s*=", (ROOT / "Dockerfile").read_text(), re.M)
    trainer_runs = " ".join(instructions(stages["trainer"], "RUN"))
    assert "python -m ml train" in trainer_runs
    assert any("data/" in c for c in instructions(stages["trainer"], "COPY"))


def test_api_image_copies_only_what_serving_needs():
    copies = instructions(dockerfile_stages()["api"], "COPY")
    sources = set()
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for source in words[:-1]:
            stage = re.search(r"--from=(\w+)", args)
            sources.add((f"{stage[1]}:" if stage else "") + source.rstrip("/"))
    # No data set, no batch scorer module: the api serves the trainer's models/ only.
    assert sources == {"requirements-serve.txt", "ml", "app", "gunicorn.conf.py",
                       "trainer:/opt/app-root/src/models", "trainer:/opt/app-root/src/keys",
                       "native:/opt/app-root/src/ml/serving/_treewalk.*.so"}
    # The compiler stays in the native stage: it builds the C module from setup.py only.
    stages = dockerfile_stages()
    native = stages["native"]
    assert native[0][1].startswith("base ")
    assert "python setup.py build_ext --inplace" in instructions(native, "RUN")
    # The api installs serving's pins only; the trainer every pin (both files share them).
    assert stages["api"][0][1].startswith("base ") and stages["trainer"][0][1].startswith("base ")
    install = "pip install --no-cache-dir -r requirements{}.txt"
    assert install.format("-serve") in " ".join(instructions(stages["api"], "RUN"))
    assert install.format("") in instructions(stages["trainer"], "RUN")


def pins(name: str) -> dict[str, str]:
    """{package: version} of a requirements file, following its -r includes."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found.update(pins(line[3:].strip()))
        elif line:
            package, _, version = line.partition("==")
            found[re.sub(r"\[.*\]", "", package).lower()] = version
    return found


def test_serving_pins_are_a_subset_of_the_full_set_without_the_training_stack():
    serve, full = pins("requirements-serve.txt"), pins("requirements.txt")
    assert all(version for version in full.values()), "every requirement is pinned exactly"
    assert "-r requirements-serve.txt" in (ROOT / "requirements.txt").read_text()
    assert serve.items() <= full.items()
    assert not {"scikit-learn", "scipy", "pandas", "matplotlib", "joblib"} & set(serve)
    assert {"numpy", "flask", "gunicorn", "sqlalchemy", "psycopg"} <= set(serve)


def test_api_image_runs_the_gunicorn_command_as_non_root_on_port_8080():
    api = dockerfile_stages()["api"]
    assert api_command() == SERVER_CMD
    users = instructions(api, "USER")
    assert users and users[-1].isdigit() and int(users[-1]) != 0, "last USER must be a non-zero UID"
    assert instructions(api, "EXPOSE") == ["8080"]
    assert api_env()["PORT"] == "8080"
    # The files a random UID in group 0 reads: group 0, group permissions = owner's.
    runs = " ".join(instructions(api, "RUN"))
    assert "chgrp -R 0" in runs and "chmod -R g=u" in runs
    assert all("--chown=1001:0" in c for c in instructions(api, "COPY"))
    assert (ROOT / "gunicorn.conf.py").is_file()


def test_api_image_has_a_json_healthcheck_on_health_check_and_oci_labels():
    api = dockerfile_stages()["api"]
    healthcheck = instructions(api, "HEALTHCHECK")[-1]
    json_part = healthcheck[healthcheck.index("CMD") + 3:].strip()
    command = json.loads(json_part)
    assert "/health_check" in " ".join(command)
    labels = " ".join(instructions(api, "LABEL"))
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${REVISION}"' in labels
    assert {"VERSION", "REVISION"} <= {a.split("=")[0] for a in instructions(api, "ARG")}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_sends_only_code_and_embedded_data_to_the_builder():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for kept in ("requirements.txt", "requirements-serve.txt", "gunicorn.conf.py",
                 "ml/training/train.py", "app/__init__.py", "data/german_credit.csv", "setup.py",
                 "ml/serving/_treewalk.c"):
        assert not dockerignored(kept, patterns), f"{kept} must reach the build"
    for dropped in (".git/config", ".venv/bin/python", "models/LATEST", "tests/test_deploy.py",
                    ".env", "app/__pycache__/api.cpython-311.pyc", "k8s/base/deployment.yaml",
                    "coverage.xml", "reports/x.json", ".github/workflows/cd.yml",
                    "ml/serving/_treewalk.cpython-311-x86_64-linux-gnu.so"):
        assert dockerignored(dropped, patterns), f"{dropped} must stay out of the build context"


def test_checkov_passes_on_the_dockerfile_and_rendered_overlays(rendered):
    setup = run(ROOT / "tools" / "checkov.sh", "--setup-only", timeout=600)
    if setup.returncode != 0:
        message = f"could not create .venv-checkov:\n{setup.stdout}{setup.stderr}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    manifests = next(iter(rendered.values()))[0].parent
    reports = []
    for args in (["--framework", "kubernetes", "-d", manifests],
                 ["--framework", "dockerfile", "-f", "Dockerfile"]):
        result = run(ROOT / "tools" / "checkov.sh", *args, "-o", "json", timeout=300)
        report = json.loads(result.stdout)
        reports.extend(report if isinstance(report, list) else [report])
        assert result.returncode == 0, result.stdout[-4000:]
    for report in reports:
        summary = report["summary"]
        assert summary["failed"] == 0 and summary["parsing_errors"] == 0, report["check_type"]
        assert summary["passed"] > 50, f"checkov scanned almost nothing: {summary}"
    kubernetes = next(r for r in reports if r["check_type"] == "kubernetes")
    scanned = {c["resource"] for c in kubernetes["results"]["passed_checks"]}
    assert any(r.startswith("Deployment.") for r in scanned)


# --------------------------------------------------------------------------- manifests

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_kubernetes_validate_strict(overlay, rendered):
    path, docs = rendered[overlay]
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "--quiet", path)
    assert result.returncode == 0 and "ERROR" not in result.stdout, result.stdout
    # Kinds it has no schema for are warned about: each must have a schema of ours.
    unknown = set(re.findall(r"for kind (\w+) with api version (\S+)", result.stdout))
    assert unknown <= CUSTOM_KINDS, unknown
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Route", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy", "ConfigMap", "ServiceMonitor", "PrometheusRule",
            "StatefulSet"} <= kinds


def test_kubernetes_validate_rejects_an_unknown_field(rendered, tmp_path):
    """Guard against a validator that passes everything: strict mode must catch typos."""
    docs = copy.deepcopy(rendered["prod"][1])
    containers(one(docs, "Deployment"))[0]["securityContext"]["runAsNonRot"] = True
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "--quiet", broken)
    assert result.returncode != 0 and "runAsNonRot" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_route_passes_the_project_route_schema_with_edge_tls_and_redirect(overlay, rendered,
                                                                          tmp_path):
    docs = rendered[overlay][1]
    routes = find(docs, "Route")
    assert routes
    for route in routes:
        instance = tmp_path / f"{route['metadata']['name']}.json"
        instance.write_text(json.dumps(route))
        ok(run(tool("check-jsonschema"), "--schemafile", ROUTE_SCHEMA, instance))
        assert route["spec"]["tls"]["termination"] == "edge"
        assert route["spec"]["tls"]["insecureEdgeTerminationPolicy"] == "Redirect"
        services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
        for backend in [route["spec"]["to"], *route["spec"].get("alternateBackends", [])]:
            service = services[backend["name"]]
            port_names = {p["name"] for p in service["spec"]["ports"]}
            assert route["spec"]["port"]["targetPort"] in port_names


ROUTE_BREAKAGES = {
    "backend kind not Service": lambda s: s["to"].update(kind="Pod"),
    "backend without weight": lambda s: s["to"].pop("weight"),
    "weight above 256": lambda s: s["to"].update(weight=300),
    "unknown termination": lambda s: s["tls"].update(termination="https"),
    "unknown insecure policy": lambda s: s["tls"].update(insecureEdgeTerminationPolicy="Deny"),
    "passthrough with Allow": lambda s: s["tls"].update(termination="passthrough",
                                                        insecureEdgeTerminationPolicy="Allow"),
    "misspelt field": lambda s: s.update(alternateBackend=[]),
    "four alternate backends": lambda s: s.update(alternateBackends=[
        {"kind": "Service", "name": f"b{i}", "weight": 1} for i in range(4)]),
    "no targetPort": lambda s: s.update(port={}),
    "no service name": lambda s: s["to"].pop("name"),
}


@pytest.mark.parametrize("breakage", sorted(ROUTE_BREAKAGES))
def test_route_schema_rejects_a_broken_route(breakage, rendered):
    jsonschema = pytest.importorskip("jsonschema")  # check-jsonschema's own engine
    schema = json.loads(ROUTE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    route = copy.deepcopy(one(rendered["canary"][1], "Route"))
    jsonschema.validate(route, schema)  # the real one passes ...
    ROUTE_BREAKAGES[breakage](route["spec"])
    with pytest.raises(jsonschema.ValidationError):  # ... and the broken one does not
        jsonschema.validate(route, schema)


def test_base_has_no_namespace_and_overlays_set_one_everywhere(rendered):
    base = [d for d in yaml.safe_load_all(kustomize(ROOT / "k8s" / "base")) if d]
    assert all("namespace" not in d["metadata"] for d in base)
    for overlay, (_, docs) in rendered.items():
        namespaces = {d["metadata"].get("namespace") for d in docs}
        assert len(namespaces) == 1 and None not in namespaces and "default" not in namespaces, (
            overlay, namespaces)
    assert (one(rendered["canary"][1], "Deployment")["metadata"]["namespace"]
            == one(rendered["prod"][1], "Deployment")["metadata"]["namespace"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_sets_a_registry_image_with_a_tag(overlay, rendered):
    for deployment in find(rendered[overlay][1], "Deployment"):
        image = containers(deployment)[0]["image"]
        assert "/" in image and re.search(r":[\w.-]+$", image), image
        assert not image.endswith(":latest")
        assert containers(deployment)[0]["imagePullPolicy"] == "Always"


def test_deployments_pass_openshift_restricted_v2(rendered):
    for overlay, deployment in deployments(rendered):
        where = f"{overlay}/{deployment['metadata']['name']}"
        pod = deployment["spec"]["template"]["spec"]
        pod_context = pod.get("securityContext", {})
        for forbidden in ("runAsUser", "runAsGroup", "fsGroup", "supplementalGroups"):
            assert forbidden not in pod_context, f"{where}: the SCC picks {forbidden}"
        assert pod_context.get("runAsNonRoot") is True, where
        assert pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), where
        assert not any("hostPath" in v for v in pod.get("volumes", [])), where
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container.get("securityContext", {})
            assert "runAsUser" not in context and "runAsGroup" not in context, where
            assert context.get("runAsNonRoot", True) is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged", False) is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert context.get("readOnlyRootFilesystem") is True, where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be an emptyDir"
            assert all(p["containerPort"] >= 1024 for p in container.get("ports", [])), where


def test_deployments_probe_ready_and_health_check_and_roll_without_downtime(rendered):
    for overlay, deployment in deployments(rendered):
        where = f"{overlay}/{deployment['metadata']['name']}"
        spec = deployment["spec"]
        if deployment["metadata"]["name"] == APP:
            assert spec["replicas"] >= 2, where
        strategy = spec["strategy"]
        assert strategy["type"] == "RollingUpdate", where
        assert strategy["rollingUpdate"]["maxUnavailable"] in (0, "0", "0%"), where
        container = containers(deployment)[0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 8080}, where
        for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"),
                            ("livenessProbe", "/health_check")):
            get = container[probe]["httpGet"]
            assert get["path"] == path and get["port"] in ("http", 8080), f"{where} {probe}"
        # Loading a model may take a while; the startup probe must allow a minute at least.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, where
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > 30 + int(pre_stop[1]), f"{where}: grace must outlast preStop + 30 s"


def test_deployments_request_and_limit_cpu_and_memory_above_the_measured_footprint(rendered):
    measured = 250 * 2**20  # 2 workers + master with the model preloaded (see deployment.yaml)
    for overlay, deployment in deployments(rendered):
        resources = containers(deployment)[0]["resources"]
        for kind in ("cpu", "memory"):
            request = quantity(resources["requests"][kind])
            limit = quantity(resources["limits"][kind])
            assert 0 < request <= limit, (overlay, kind)
        assert quantity(resources["requests"]["memory"]) >= measured, overlay
        assert quantity(resources["limits"]["memory"]) >= 1.5 * measured, overlay


def test_deployments_take_settings_from_the_configmap_and_the_database_url_from_a_secret(
        rendered):
    for overlay, deployment in deployments(rendered):
        docs = rendered[overlay][1]
        container = containers(deployment)[0]
        (source,) = container["envFrom"]
        config = one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        assert config["PORT"] == "8080"
        assert config["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
        assert not any(re.search(r"PASSWORD|TOKEN|SECRET", key) for key in config)
        assert "@" not in config.get("DATABASE_URL", ""), "credentials belong in the Secret"
        (database_url,) = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
        reference = database_url["valueFrom"]["secretKeyRef"]
        # Required: no per-pod SQLite fallback (the ConfigMap has no DATABASE_URL either).
        assert reference["optional"] is False and reference["key"] == "DATABASE_URL"
        assert "DATABASE_URL" not in config
        # OpenShift scrapes through the ServiceMonitor; it ignores prometheus.io/* annotations.
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert not any(key.startswith("prometheus.io/") for key in annotations)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_hpa_pdb_and_networkpolicy_target_the_stable_pods(overlay, rendered):
    docs = rendered[overlay][1]
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(docs, "Service")
    assert selects(service["spec"]["selector"], pod_labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": APP}
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    # A budget that allows no eviction at the minimum scale would block every node drain.
    allowed = (pdb["spec"]["maxUnavailable"] if "maxUnavailable" in pdb["spec"]
               else hpa["spec"]["minReplicas"] - pdb["spec"]["minAvailable"])
    assert allowed >= 1
    policy = one(docs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    groups = {p.get("namespaceSelector", {}).get("matchLabels", {}).get(
        "network.openshift.io/policy-group") for p in rule["from"]}
    assert "ingress" in groups, "the OpenShift router must reach the pods"


def test_canary_overlay_splits_route_traffic_between_two_separate_tracks(rendered):
    docs = rendered["canary"][1]
    stable, canary = one(docs, "Deployment"), one(docs, "Deployment", f"{APP}-canary")
    stable_pods = stable["spec"]["template"]["metadata"]["labels"]
    canary_pods = canary["spec"]["template"]["metadata"]["labels"]
    stable_service, canary_service = one(docs, "Service"), one(docs, "Service", f"{APP}-canary")
    # Each Service reaches its own track only; the Route does the weighting.
    assert selects(stable_service["spec"]["selector"], stable_pods)
    assert not selects(stable_service["spec"]["selector"], canary_pods)
    assert selects(canary_service["spec"]["selector"], canary_pods)
    assert not selects(canary_service["spec"]["selector"], stable_pods)
    assert find(docs, "NetworkPolicy", f"{APP}-canary"), "canary pods need their own policy"
    route = one(docs, "Route")
    (alternate,) = route["spec"]["alternateBackends"]
    assert route["spec"]["to"]["name"] == APP and alternate["name"] == f"{APP}-canary"
    assert 0 < alternate["weight"] < route["spec"]["to"]["weight"]
    assert route["spec"]["to"]["weight"] + alternate["weight"] == 100
    assert canary["spec"]["replicas"] >= 1
    assert not find(docs, "HorizontalPodAutoscaler", f"{APP}-canary")
    # Apart from name, labels, replicas and image the canary runs what production runs.
    prod = one(rendered["prod"][1], "Deployment")
    assert containers(canary)[0]["resources"] == containers(prod)[0]["resources"]
    assert containers(stable)[0]["image"] == containers(prod)[0]["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_objects_pass_the_project_schemas(overlay, rendered, tmp_path):
    docs = rendered[overlay][1]
    for kind, schema in MONITORING_SCHEMAS.items():
        (obj,) = find(docs, kind)
        instance = tmp_path / f"{kind}.json"
        instance.write_text(json.dumps(obj))
        ok(run(tool("check-jsonschema"), "--schemafile", schema, instance))


MONITOR_BREAKAGES = {
    "ServiceMonitor": {
        "no endpoints": lambda s: s.update(endpoints=[]),
        "empty selector": lambda s: s.update(selector={}),
        "misspelt field": lambda s: s["endpoints"][0].update(bearerToken="x"),
        "basic auth": lambda s: s["endpoints"][0]["authorization"].update(type="Basic"),
        "bad interval": lambda s: s["endpoints"][0].update(interval="30 seconds"),
    },
    "PrometheusRule": {
        "no groups": lambda s: s.update(groups=[]),
        "alert and record": lambda s: s["groups"][0]["rules"][0].update(record="x:y"),
        "no expr": lambda s: s["groups"][0]["rules"][0].pop("expr"),
        "bad for": lambda s: s["groups"][0]["rules"][0].update({"for": "half an hour"}),
        "misspelt field": lambda s: s["groups"][0].update(rule=[]),
    },
}


@pytest.mark.parametrize("kind,breakage", [(k, b) for k, table in MONITOR_BREAKAGES.items()
                                           for b in sorted(table)])
def test_monitoring_schemas_reject_a_broken_object(kind, breakage, rendered):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(MONITORING_SCHEMAS[kind].read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    obj = copy.deepcopy(one(rendered["prod"][1], kind))
    jsonschema.validate(obj, schema)
    MONITOR_BREAKAGES[kind][breakage](obj["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_metrics_of_every_api_service_with_a_secret_token(overlay,
                                                                                  rendered):
    docs = rendered[overlay][1]
    monitor = one(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"] == {"name": "credit-risk-api-metrics",
                                                        "key": "token"}
    scraped = {s["metadata"]["name"] for s in find(docs, "Service")
               if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])}
    api_services = {s["metadata"]["name"] for s in find(docs, "Service")
                    if s["metadata"]["name"].startswith(APP)}
    assert scraped == api_services, scraped
    # The API's NetworkPolicy lets OpenShift's monitoring namespace in.
    groups = {p.get("namespaceSelector", {}).get("matchLabels", {}).get(
        "network.openshift.io/policy-group")
        for p in one(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"]}
    assert "monitoring" in groups


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgresql_is_shared_persistent_and_reachable_only_by_the_app(overlay, rendered):
    docs = rendered[overlay][1]
    (db,) = find(docs, "StatefulSet")
    assert db["metadata"]["name"] == "credit-risk-db" and db["spec"]["replicas"] == 1
    pod = db["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"].startswith("registry.redhat.io/rhel9/postgresql-15:")
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert {r["name"] for r in secrets.values()} == {"credit-risk-api-db"}
    assert set(secrets) == {"POSTGRESQL_USER", "POSTGRESQL_PASSWORD", "POSTGRESQL_DATABASE"}
    (claim,) = db["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/pgsql/data"
    service = one(docs, "Service", "credit-risk-db")
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    # The API's Service never selects the database pod, nor the database's the API's.
    api_pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selects(one(docs, "Service")["spec"]["selector"], pod["metadata"]["labels"])
    assert not selects(service["spec"]["selector"], api_pods)
    policy = one(docs, "NetworkPolicy", "credit-risk-db")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespace, no router: only this app's pods"
    clients = [one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]]
    clients += [c["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
                for c in find(docs, "CronJob")]
    assert all(selects(peer["podSelector"]["matchLabels"], labels) for labels in clients)
    # Same restricted-v2 rules as the Deployments.
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"] and "runAsUser" not in context


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_pods_migrate_the_store_and_jobs_run_the_trainer_image(overlay, rendered):
    docs = rendered[overlay][1]
    for deployment in find(docs, "Deployment"):
        (migrate,) = deployment["spec"]["template"]["spec"]["initContainers"]
        assert migrate["image"] == containers(deployment)[0]["image"]
        assert migrate["command"] == ["python", "-m", "ml", "db", "upgrade"]  # Alembic
        assert [e["name"] for e in migrate["env"]] == ["DATABASE_URL"]
    for job in find(docs, "CronJob"):
        (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        image = container["image"]
        assert re.fullmatch(r"[\w.-]+/[\w./-]+/credit-risk-api-trainer:[\w.-]+", image), image
        (database_url,) = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
        assert database_url["valueFrom"]["secretKeyRef"]["optional"] is False


def test_canary_patches_hold_one_delete_each_and_render_alike_with_every_kustomize():
    """kustomize v5.5 (kubectl 1.32, older oc) crashes on a file of several `$patch: delete`
    documents; one per file renders the same with every version. Every kubectl found
    (the venv's, and KUBECTL_EXTRA: a colon-separated list of others) must agree."""
    for path in (ROOT / "k8s").rglob("*.yaml"):
        deletes = len(re.findall(r"^\$patch: delete", path.read_text(), re.M))
        assert deletes <= 1, f"{path}: one $patch: delete per file"
    binaries = [tool("kubectl")] + [Path(p) for p in
                                    os.environ.get("KUBECTL_EXTRA", "").split(":") if p]
    for overlay in OVERLAYS:
        outputs = {ok(run(binary, "kustomize", OVERLAYS_DIR / overlay)) for binary in binaries}
        assert len(outputs) == 1, f"{overlay} renders differently across {binaries}"


def test_manifests_and_workflows_pass_yamllint():
    ok(run(tool("yamllint"), "--strict", "k8s", ".github", ".yamllint", ".checkov.yaml"))


# --------------------------------------------------------------------------- workflows

def workflow(name: str) -> dict:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def steps(job: dict) -> str:
    """All `run` scripts and `uses` of a job, as one text to search."""
    return "\n".join(s.get("run", "") + " " + s.get("uses", "") for s in job["steps"])


def test_workflows_pass_actionlint_and_the_github_workflow_schema():
    ok(run(tool("actionlint"), "-no-color"))
    files = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "cd.yml"}
    ok(run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *files))


def test_ci_workflow_lints_tests_validates_and_uploads_coverage_and_model_card():
    ci = workflow("ci.yml")
    assert {"pull_request", "push", "workflow_call"} <= set(ci["on"])
    text = "\n".join(steps(job) for job in ci["jobs"].values())
    for needed in ("actions/setup-python", "make lint", "make test",
                   "tools/validate_manifests.sh", "tools/checkov.sh", "actions/upload-artifact",
                   "tools/image_check.sh"):
        assert needed in text, needed
    uploads = "\n".join(s["with"]["path"] for job in ci["jobs"].values() for s in job["steps"]
                        if "upload-artifact" in s.get("uses", ""))
    assert "coverage.xml" in uploads and "models/*/model_card.json" in uploads
    script = (ROOT / "tools" / "validate_manifests.sh").read_text()
    for needed in ("hadolint", "kustomize", "kubernetes-validate", "check-jsonschema",
                   "actionlint", "yamllint"):
        assert needed in script, needed


def test_cd_workflow_deploys_to_production_smoke_tests_and_rolls_back():
    cd = workflow("cd.yml")
    assert cd["on"]["push"]["branches"] == ["main"] and cd["on"]["push"]["tags"] == ["v*"]
    jobs = cd["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    build = steps(jobs["image"])
    assert "docker/build-push-action" in build
    build_step = next(s for s in jobs["image"]["steps"]
                      if "build-push-action" in s.get("uses", ""))
    assert build_step["with"]["target"] == "api" and build_step["with"]["push"] is True
    deploy = jobs["deploy"]
    assert deploy["environment"]["name"] == "production"
    assert "image" in deploy["needs"]
    text = steps(deploy)
    for needed in ("redhat-actions/oc-login@v1", "kustomize edit set image",
                   "oc apply -k k8s/overlays/prod", "oc rollout status deployment/credit-risk-api",
                   "/health_check", "/ready", "/predict", "jq -e .example"):
        assert needed in text, needed
    assert text.count("curl -fsS") >= 4
    rollback = next(s for s in deploy["steps"] if "oc rollout undo" in s.get("run", ""))
    assert "failure()" in rollback["if"]
    assert "deployment/credit-risk-api" in rollback["run"]


def test_every_secret_and_variable_the_workflows_use_is_documented():
    used = set()
    for path in (ROOT / ".github" / "workflows").glob("*.yml"):
        used |= set(re.findall(r"\b(?:secrets|vars)\.([A-Z_][A-Z0-9_]*)", path.read_text()))
    assert {"REGISTRY", "IMAGE_NAME", "REGISTRY_USERNAME", "REGISTRY_PASSWORD",
            "OPENSHIFT_SERVER", "OPENSHIFT_TOKEN", "OPENSHIFT_NAMESPACE"} <= used
    docs = (ROOT / "docs" / "deploy.md").read_text()
    missing = sorted(name for name in used if f"`{name}`" not in docs)
    assert not missing, f"document in docs/deploy.md: {missing}"


def test_every_configmap_setting_is_documented(rendered):
    docs = (ROOT / "docs" / "deploy.md").read_text()
    config = one(rendered["prod"][1], "ConfigMap",
                 containers(one(rendered["prod"][1], "Deployment"))[0]["envFrom"][0]
                 ["configMapRef"]["name"])["data"]
    missing = sorted(key for key in [*config, "DATABASE_URL"] if f"`{key}`" not in docs)
    assert not missing, f"document in docs/deploy.md: {missing}"


def test_make_deploy_applies_the_chosen_overlay():
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = ok(run(make, "-n", "deploy", "ENV=dev"))
    assert "oc apply -k k8s/overlays/dev" in dry
    dry = ok(run(make, "-n", "docker-build", "TAG=abc"))
    assert "--target api" in dry and "--target trainer" in dry and "REVISION=" in dry
    assert "tools/image_check.sh" in ok(run(make, "-n", "image-check"))


# --------------------------------------------------------------------------- OpenShift-like run

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    field = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", rollup, re.M)}
    return field["Rss"], field["Pss"]


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def blocking_ancestor(path: Path) -> Path | None:
    """The outermost directory above ``path`` that other users may not enter, if any."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & 0o001:
            return parent
    return None


def as_openshift_uid(command: list[str], sandbox: Path) -> list[str]:
    """``command`` run as OPENSHIFT_UID, group 0 and no other group (setpriv).

    In the image the interpreter lives in /opt/app-root, which any UID may enter. On a
    host its install (sys.base_prefix) or the venv may sit under a private directory
    such as /root (mode 0700). Then the command runs in its own mount namespace where
    that directory is an empty tmpfs holding only bind mounts of those two trees: the
    random UID reaches the interpreter, and nothing else of the host changes.
    """
    drop = ["setpriv", f"--reuid={OPENSHIFT_UID}", "--regid=0", "--clear-groups", "--"]
    needed = sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()})
    hidden = {path: blocking_ancestor(path) for path in needed}
    hidden = {path: top for path, top in hidden.items() if top is not None}
    if not hidden:
        return drop + command
    script = ["set -e"]
    for i, path in enumerate(hidden):
        script += [f"mkdir -p {sandbox}/stash{i}", f"mount --bind {shlex.quote(str(path))} "
                   f"{sandbox}/stash{i}"]
    for top in sorted(set(hidden.values())):
        script.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(top))}")
    for i, path in enumerate(hidden):
        script += [f"mkdir -p {shlex.quote(str(path))}",
                   f"mount --bind {sandbox}/stash{i} {shlex.quote(str(path))}"]
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script),
            "sh", *drop, *command]


@pytest.fixture(scope="module")
def serving_model_dir(request, tmp_path_factory) -> Path:
    """A trained models/ dir with LATEST: the suite's shared one, else a quick one of ours."""
    try:
        return Path(request.getfixturevalue("trained_model_dir"))
    except pytest.FixtureLookupError:
        pass
    out = tmp_path_factory.mktemp("openshift-models") / "models"
    ok(run(sys.executable, "-m", "ml", "-q", "train", "--out", out, "--seed", "1",
           "--families", "logistic_regression", "--cv-repeats", "1", "--no-plots", timeout=600))
    return out


def models_root(path: Path) -> Path:
    """The models/ dir holding LATEST for a fixture that may return an artifact dir."""
    return path if (path / "LATEST").is_file() else path.parent


@pytest.mark.slow
def test_image_command_serves_ready_as_a_random_uid_on_a_read_only_tree(request):
    """The api stage's CMD, run as OpenShift runs it, answers /ready with 200.

    Random UID in group 0 and no other group, application files owned by 1001:0 with
    g=u and nobody allowed to write, HOME unwritable, TMPDIR and the Prometheus directory
    on a writable /tmp (the emptyDir), the image's ENV and the ConfigMap's settings.
    """
    if not (ROOT / "app" / "__init__.py").is_file():
        pytest.skip("the app package is not there yet")
    if os.geteuid() != 0:
        pytest.skip("switching to a random UID needs root")
    for needed in ("setpriv", "unshare"):
        if shutil.which(needed) is None:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{needed} (util-linux) missing")
    model_dir = models_root(request.getfixturevalue("serving_model_dir"))

    sandbox = Path(tempfile.mkdtemp(prefix="openshift-like-"))
    try:
        src = sandbox / "app-root" / "src"     # /opt/app-root/src in the image
        writable_tmp = sandbox / "tmp"         # the emptyDir on /tmp
        src.mkdir(parents=True)
        for name in ("ml", "app"):
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(ROOT / "gunicorn.conf.py", src)
        shutil.copytree(model_dir, src / "models")
        # The trusted public key, mounted from a ConfigMap in the cluster (docs/deploy.md,
        # "Signing"): here the session's test key that signed the artifact.
        shutil.copytree(os.environ["MODEL_TRUSTED_KEYS"], src / "trusted-keys")
        # The API key file, as the pod mounts it from a Secret (auth is on by default).
        from app.auth_keys import create_key

        keys_file = src / "secrets" / "api-keys.yaml"
        key = create_key(str(keys_file), "smoke", ["score"])
        keys_file.with_name("secret-key").write_text(secrets.token_hex(32))
        for path in [sandbox, sandbox / "app-root", *src.rglob("*"), src]:
            os.chown(path, 1001, 0, follow_symlinks=False)
            mode = path.stat().st_mode
            owner = (mode >> 6) & 0o5  # read and search, never write
            path.chmod((mode & ~0o777) | owner << 6 | owner << 3)  # g=u, nothing for others
        writable_tmp.mkdir(mode=0o1777)
        writable_tmp.chmod(0o1777)

        def in_image(value: str) -> str:
            """An image path moved into the sandbox (one pass: replacements stay put)."""
            return re.sub(r"/opt/app-root/src|/tmp\b",
                          lambda m: str(src if m[0] != "/tmp" else writable_tmp), value)

        rendered_docs = [d for d in yaml.safe_load_all(kustomize(ROOT / "k8s" / "base")) if d]
        config = find(rendered_docs, "ConfigMap")[0]["data"]
        port = free_port()
        env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": str(src), "TMPDIR": str(writable_tmp)}
        env.update({k: in_image(v) for k, v in api_env().items()})
        env.update({k: in_image(v) for k, v in config.items()})
        env["PORT"] = str(port)
        # What the Deployment mounts from Secrets and a ConfigMap, at the sandbox's paths.
        env["API_KEYS_FILE"] = str(keys_file)
        env["MODEL_TRUSTED_KEYS"] = str(src / "trusted-keys")
        env["SECRET_KEY_FILE"] = str(keys_file.with_name("secret-key"))
        command = api_command()
        assert command[0] == "gunicorn" and (BIN / "gunicorn").is_file()

        def openshift_run(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(as_openshift_uid(list(argv), sandbox), cwd=src, env=env,
                                  capture_output=True, text=True, timeout=60)

        # The code the server imports must be the read-only copy, not the repo's checkout
        # (gunicorn puts its working directory first on sys.path).
        where = openshift_run("python", "-c", "import sys; sys.path.insert(0, ''); "
                              "from importlib.util import find_spec as f; "
                              "print(f('app').origin); print(f('ml').origin)")
        assert where.returncode == 0, where.stderr
        assert all(line.startswith(str(src)) for line in where.stdout.split()), where.stdout
        identity = openshift_run("sh", "-c", "id -u; id -G").stdout.split()
        assert identity == [str(OPENSHIFT_UID), "0"], identity
        probe = openshift_run("sh", "-c", f"touch {src}/x || touch $HOME/x")
        assert probe.returncode != 0, "the application tree and HOME must be unwritable"

        log = sandbox / "server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(as_openshift_uid(command, sandbox), cwd=src, env=env,
                                      stdout=out, stderr=subprocess.STDOUT)
        try:
            # The model loads in the master before the workers fork (preload_app), so the
            # server is ready as soon as it listens; the margin is for a loaded CI machine.
            status, body, deadline = None, b"", time.monotonic() + 60
            while time.monotonic() < deadline:
                assert server.poll() is None, "server exited:\n" + log.read_text()[-4000:]
                try:
                    status, body = get(f"http://127.0.0.1:{port}/ready")
                except OSError:
                    status = None
                if status == 200:
                    break
                time.sleep(0.25)
            assert status == 200, (f"/ready answered {status} {body[:2000]!r}; server log:\n"
                                   + log.read_text()[:4000])
            assert get(f"http://127.0.0.1:{port}/health_check")[0] == 200
            assert get(f"http://127.0.0.1:{port}/model")[0] == 401
            example = json.loads(get(f"http://127.0.0.1:{port}/model", key=key)[1])["example"]
            status, body = get(f"http://127.0.0.1:{port}/predict", json.dumps(example).encode(),
                               key)
            assert status == 200, body

            # The first worker can answer before gunicorn has forked the last one.
            expected, deadline = 1 + int(config["WEB_CONCURRENCY"]), time.monotonic() + 30
            pids = process_tree(server.pid)
            while len(pids) < expected and time.monotonic() < deadline:
                time.sleep(0.25)
                pids = process_tree(server.pid)
            assert len(pids) == expected
            for pid in pids:
                uid_line = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(),
                                     re.M)
                assert int(uid_line[1]) == OPENSHIFT_UID
            rss, pss = (sum(values) for values in zip(*map(memory_kib, pids)))
            print(f"\nmemory of master + {len(pids) - 1} workers: RSS {rss / 1024:.0f} MiB "
                  f"(sum), PSS {pss / 1024:.0f} MiB")
            # PSS counts each page shared after the fork once, as the pod's cgroup does.
            # The sizing in base/deployment.yaml holds while the request keeps 25% headroom
            # over it and the limit 50%.
            resources = containers(one(rendered_docs, "Deployment"))[0]["resources"]
            assert pss * 1024 * 1.25 <= quantity(resources["requests"]["memory"]), "resize"
            assert pss * 1024 * 1.5 <= quantity(resources["limits"]["memory"]), "resize"
            assert os.listdir(env["PROMETHEUS_MULTIPROC_DIR"]), "metrics must go to /tmp"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=40)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        assert server.returncode == 0, log.read_text()[-4000:]
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
