#!/usr/bin/env bash
# Run checkov (pinned) from its own virtualenv, .venv-checkov/, with .checkov.yaml.
# checkov pins dependencies that clash with the app's (it downgrades `packaging`), so it
# never goes into .venv. The venv is made on first use (about a minute from PyPI) and
# reused after; a stamp file marks a finished install.
#
#   tools/checkov.sh                   scan the rendered overlays and the Dockerfile
#   tools/checkov.sh --setup-only      only make sure the venv exists
#   tools/checkov.sh ARGS...           checkov --config-file .checkov.yaml ARGS...
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
VENV=${CHECKOV_VENV:-.venv-checkov}
PYTHON=${PYTHON:-python3.11}
STAMP="$VENV/.installed-checkov-$CHECKOV_VERSION"

if [ ! -f "$STAMP" ]; then
  # One installer at a time (two test runs, or a test run and a person).
  exec 9>"${TMPDIR:-/tmp}/credit-risk-checkov-venv.lock"
  flock 9
  if [ ! -f "$STAMP" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # Keep the venv out of git without touching the project's .gitignore.
    echo '*' > "$VENV/.gitignore"
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "checkov==$CHECKOV_VERSION" > "$VENV/pip-install.log" 2>&1; then
      cat "$VENV/pip-install.log" >&2
      exit 1
    fi
    touch "$STAMP"
  fi
  flock -u 9
fi

if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi

CHECKOV=("$VENV/bin/checkov" --config-file .checkov.yaml)
if [ $# -gt 0 ]; then
  exec "${CHECKOV[@]}" "$@"
fi

KUBECTL=${KUBECTL:-.venv/bin/kubectl}
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in k8s/overlays/*/; do
  "$KUBECTL" kustomize "$overlay" > "$rendered/$(basename "$overlay").yaml"
done
"${CHECKOV[@]}" --quiet --framework kubernetes -d "$rendered"
"${CHECKOV[@]}" --quiet --framework dockerfile -f Dockerfile
