#!/usr/bin/env bash
# Offline checks of everything this repo ships to a cluster or a CI runner:
#   - hadolint on the Dockerfile (no warnings);
#   - every overlay under k8s/overlays renders (kubectl kustomize) and each rendered
#     object passes kubernetes-validate --strict for the Kubernetes version of a current
#     OpenShift 4 release; kinds it has no schema for must have one under schemas/
#     (the Route does), and pass it (check-jsonschema);
#   - yamllint on k8s/ and .github/;
#   - actionlint and the GitHub workflow JSON schema on .github/workflows.
# Tools come from the project's venv (make install-dev). tests/test_deploy.py checks the
# same and more; this script is for CI's log and for people.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${VENV:-.venv}/bin
# OpenShift 4.20 runs Kubernetes 1.33.
K8S_VERSION=${K8S_VERSION:-1.33.0}
out=${RENDER_DIR:-$(mktemp -d)}
mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

step "hadolint Dockerfile"
"$BIN/hadolint" --failure-threshold warning Dockerfile

for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  rendered="$out/$name.yaml"
  step "render $overlay -> $rendered"
  "$BIN/kubectl" kustomize "$overlay" > "$rendered"

  step "kubernetes-validate --strict -k $K8S_VERSION ($name)"
  report=$("$BIN/kubernetes-validate" --strict -k "$K8S_VERSION" --quiet "$rendered") || {
    echo "$report"; exit 1; }
  echo "${report:-all objects valid}"

  step "JSON schemas under schemas/ ($name)"
  # Objects of kinds kubernetes-validate has no schema for (the Route) go to one JSON
  # file each; every such kind must have schemas/<group>_<version>_<kind>.json.
  K8S_VERSION=$K8S_VERSION "$BIN/python" - "$rendered" "$out/$name" <<'PY' |
import json, os, pathlib, sys
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, validate

rendered, outdir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
outdir.mkdir(parents=True, exist_ok=True)
for doc in filter(None, yaml.safe_load_all(rendered.read_text())):
    try:
        validate(doc, os.environ["K8S_VERSION"], strict=True)
        continue
    except SchemaNotFoundError:
        pass
    schema = pathlib.Path("schemas") / "{}_{}.json".format(
        doc["apiVersion"].replace("/", "_"), doc["kind"].lower())
    if not schema.is_file():
        sys.exit(f"no schema for {doc['kind']} {doc['apiVersion']}: expected {schema}")
    instance = outdir / f"{doc['kind'].lower()}-{doc['metadata']['name']}.json"
    instance.write_text(json.dumps(doc))
    print(schema, instance)
PY
  while read -r schema instance; do
    "$BIN/check-jsonschema" --schemafile "$schema" "$instance"
  done
done

step "yamllint k8s .github"
"$BIN/yamllint" --strict k8s .github .yamllint .checkov.yaml

step "actionlint"
"$BIN/actionlint"

step "GitHub workflow schema"
"$BIN/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml

echo
echo "manifests, Dockerfile and workflows: all checks passed"
