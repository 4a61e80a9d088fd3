#!/usr/bin/env bash
# Create (once per namespace) the Secret credit-risk-api-db that PostgreSQL
# (k8s/postgres) and the API and CronJobs (DATABASE_URL) read. The password is random
# and never leaves the cluster; re-running keeps an existing Secret (the database was
# initialised with its password).
#   tools/db_secret.sh NAMESPACE            (oc, or KUBECTL=kubectl)
set -euo pipefail
NAMESPACE=${1:?usage: $0 NAMESPACE}
KUBECTL=${KUBECTL:-oc}
if "$KUBECTL" -n "$NAMESPACE" get secret credit-risk-api-db >/dev/null 2>&1; then
  echo "secret credit-risk-api-db exists in $NAMESPACE: kept"
  exit 0
fi
# Hex: safe inside a URL without escaping.
password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
"$KUBECTL" -n "$NAMESPACE" create secret generic credit-risk-api-db \
  --from-literal=database-user=credit \
  --from-literal=database-password="$password" \
  --from-literal=database-name=credit \
  --from-literal=DATABASE_URL="postgresql+psycopg://credit:$password@credit-risk-db:5432/credit"
