#!/usr/bin/env bash
# The images, built and run for real (make image-check; make test runs it on every CI run).
#
#  1. A Docker engine: the one DOCKER_HOST names if set (GitHub's runners), else Debian's
#     docker.io (installed if missing) started by hand -- containerd, then dockerd with its
#     sockets and state under a temporary directory and its own data root in
#     IMAGE_CHECK_CACHE (kept between runs: the layer cache makes a re-run take a
#     fraction of the first; one run at a time, flock) -- and stopped by PID at the end,
#     whatever happens (trap).
#  2. The base: BASE_IMAGE if set (CI on GitHub: the real UBI python-311), else a stand-in
#     with the same layout built from Debian packages (tools/standin_images.sh, cached in
#     IMAGE_CHECK_CACHE) and loaded with `docker import`. PostgreSQL likewise.
#  3. Builds `trainer` and `api` with BuildKit and --build-arg BASE_IMAGE (the trainer's
#     build-time model is a quick one, TRAIN_ARGS: the check is about the image).
#  4. Runs the api as OpenShift does (a random UID in group 0, read-only root, /tmp tmpfs,
#     no capabilities, no-new-privileges): /ready, a /predict (smoke_predict), GET
#     /monitoring, the image's HEALTHCHECK turning healthy, and exit code 0 on SIGTERM.
#  5. Runs the trainer and the two CronJobs' commands (read from k8s/base) the same way.
#  6. Brings compose.yaml up (trainer -> shared volume -> api, PostgreSQL), scores through
#     it, checks the prediction landed in PostgreSQL, and takes it down.
# Sizes of the images are printed at the end (docs/deploy.md records them); with
# IMAGE_CHECK_BASELINE=<git ref>, also those of that commit's api image on the same base.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${IMAGE_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/credit-risk-image-check}
OPENSHIFT_UID=1000770000
TAG=check
PROJECT=credit-risk-check
QUICK_TRAIN="--families logistic_regression --cv-repeats 1 --no-plots"
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d "${TMPDIR:-/tmp}/image-check.XXXXXX")
ENGINE_PIDS=()
COMPOSE_UP=0
started=$SECONDS

step() { printf '\n== [%3ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() { echo "image check FAILED: $*" >&2; exit 1; }

cleanup() {
  local status=$?
  set +e
  if [ "$COMPOSE_UP" = 1 ]; then
    compose logs --no-color --tail 50 > "$WORK/compose.log" 2>&1
    [ "$status" = 0 ] || tail -n 60 "$WORK/compose.log" >&2
    compose down --volumes --timeout 20 >/dev/null 2>&1
  fi
  if [ -n "${DOCKER_OWNED:-}" ]; then
    "$DOCKER" rm -f $("$DOCKER" ps -aq) >/dev/null 2>&1
  fi
  # Stop the engine we started: dockerd first (it stops its containers), then containerd.
  for ((i = ${#ENGINE_PIDS[@]} - 1; i >= 0; i--)); do
    kill "${ENGINE_PIDS[i]}" 2>/dev/null && wait "${ENGINE_PIDS[i]}" 2>/dev/null
  done
  if [ "$status" != 0 ] && [ -f "$WORK/dockerd.log" ]; then tail -n 20 "$WORK/dockerd.log" >&2; fi
  # Overlay mounts a killed engine may leave behind, then the data root.
  grep -oE " ($WORK|$CACHE/engine)[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l
  rm -rf --one-file-system "$WORK"
  echo "image check: $([ "$status" = 0 ] && echo passed || echo FAILED) in $((SECONDS - started)) s"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------- engine
apt_install() {
  [ "$(id -u)" = 0 ] || fail "missing $*: run as root or install it (apt-get install $*)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_engine() {
  if [ -n "${DOCKER_HOST:-}" ]; then
    DOCKER=$(command -v docker)
    step "engine: the one at DOCKER_HOST=$DOCKER_HOST"
    return
  fi
  command -v dockerd >/dev/null || apt_install docker.io
  # The client of the same package (another `docker` earlier on PATH may lack BuildKit).
  DOCKER=$(dirname "$(command -v dockerd)")/../bin/docker
  [ -x "$DOCKER" ] || DOCKER=$(command -v docker)
  step "engine: containerd + dockerd under $WORK, data root $CACHE/engine (overlay2)"
  mkdir -p "$CACHE"
  exec 8>"$CACHE/engine.lock"
  flock 8
  containerd --root "$CACHE/engine/containerd" --state "$WORK/containerd-state" \
    --address "$WORK/containerd.sock" > "$WORK/containerd.log" 2>&1 &
  ENGINE_PIDS+=($!)
  for _ in $(seq 50); do [ -S "$WORK/containerd.sock" ] && break; sleep 0.2; done
  dockerd --containerd="$WORK/containerd.sock" --data-root "$CACHE/engine/docker" \
    --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" --host "unix://$WORK/docker.sock" \
    --storage-driver overlay2 > "$WORK/dockerd.log" 2>&1 &
  ENGINE_PIDS+=($!)
  export DOCKER_HOST="unix://$WORK/docker.sock"
  DOCKER_OWNED=1
  for _ in $(seq 100); do "$DOCKER" version >/dev/null 2>&1 && return; sleep 0.2; done
  cat "$WORK/dockerd.log" >&2
  fail "dockerd did not start"
}

docker_() { "$DOCKER" "$@"; }

standin() {  # KIND NAME: import the cached stand-in tarball (built if missing); print its tag
  local tarball image changes=()
  tarball=$(tools/standin_images.sh "$1" "$CACHE")
  # Tagged with the recipe's hash (in the tarball's name): imported once per recipe, so
  # the layer cache built on it stays valid.
  image=localhost/$2:${tarball##*-}
  image=${image%.tar}
  if ! docker_ image inspect "$image" >/dev/null 2>&1; then
    while IFS= read -r line; do changes+=(--change "$line"); done \
      < <(tools/standin_images.sh changes "$1")
    docker_ import "${changes[@]}" "$tarball" "$image" >/dev/null
  fi
  echo "$image"
}

# --------------------------------------------------------------------------- helpers
# How OpenShift's restricted-v2 SCC runs a container (plus docker's own equivalents).
OPENSHIFT_RUN=(--user "$OPENSHIFT_UID:0" --read-only --tmpfs /tmp:rw,mode=1777
               --cap-drop ALL --security-opt no-new-privileges)

make_keys() {  # API key file (all scopes) and a model signing key pair for the jobs, in $WORK
  # Readable by the containers' random UID (they are throw-away keys of this run).
  mkdir -p "$WORK/secrets/trusted"
  API_KEY=$(PYTHONPATH=$ROOT "$PY" -m app keys --file "$WORK/secrets/api-keys.yaml" create \
            --name image-check --scopes all)
  PYTHONPATH=$ROOT "$PY" -m ml -q keygen --private "$WORK/secrets/signing.pem" \
    --public "$WORK/secrets/trusted/image-check.pub" >/dev/null
  chmod -R a+rX "$WORK/secrets"
  export API_KEYS_HOST_FILE="$WORK/secrets/api-keys.yaml" MODEL_KEYS_HOST_DIR="$WORK/secrets"
  # The api with its key file mounted from the host, as OpenShift mounts the Secret.
  API_AUTH=(--volume "$WORK/secrets/api-keys.yaml:/etc/credit-risk/api-keys.yaml:ro"
            --env API_KEYS_FILE=/etc/credit-risk/api-keys.yaml)
  # The jobs sign what they train with the run's key; they trust it and the build's.
  JOB_KEYS=(--volume "$WORK/secrets:/etc/credit-risk/model-keys:ro"
            --env MODEL_SIGNING_KEY_FILE=/etc/credit-risk/model-keys/signing.pem
            --env MODEL_TRUSTED_KEYS=/etc/credit-risk/model-keys/trusted:/opt/app-root/src/keys/trusted)
}

authed_curl() {  # curl with the run's API key
  curl -H "Authorization: Bearer $API_KEY" "$@"
}

smoke_predict() {  # BASE_URL: POST the model card's example to /predict, print the answer.
  # The one request the checks make to /predict, authenticated with the run's API key.
  local url=$1 example
  example=$(authed_curl -fsS "$url/model" | "$PY" -c \
    'import json, sys; print(json.dumps(json.load(sys.stdin)["example"]))')
  authed_curl -fsS -H 'Content-Type: application/json' --data "$example" "$url/predict"
}

wait_ready() {  # BASE_URL SECONDS
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1/ready" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

host_port() {  # CONTAINER PORT -> the 127.0.0.1 port docker published it on
  docker_ port "$1" "$2" | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' | head -n1
}

cronjob_command() {  # NAME: the command of k8s/base/cronjob-NAME.yaml, one word a line
  "$PY" - "k8s/base/cronjob-$1.yaml" <<'PY'
import sys, yaml
job = yaml.safe_load(open(sys.argv[1]))
print("\n".join(job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]))
PY
}

compose() {
  docker-compose --project-name "$PROJECT" --file compose.yaml "$@"
}

# --------------------------------------------------------------------------- checks
build_images() {
  local base=${BASE_IMAGE:-}
  if [ -z "$base" ]; then
    step "stand-in base images (Debian packages, cached in $CACHE)"
    base=$(standin python ubi9-python-311-standin)
    export POSTGRES_IMAGE=${POSTGRES_IMAGE:-$(standin postgres postgresql-15-standin)}
  fi
  BASE_USED=$base
  local target
  for target in trainer api; do
    step "build --target $target (BASE_IMAGE=$base)"
    DOCKER_BUILDKIT=1 docker_ build --progress plain --build-arg "BASE_IMAGE=$base" \
      --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
      --build-arg TRAIN_ARGS="$QUICK_TRAIN" \
      --target "$target" --tag "credit-risk-api$([ $target = api ] || echo -trainer):$TAG" . \
      > "$WORK/build-$target.log" 2>&1 || { tail -n 40 "$WORK/build-$target.log" >&2;
                                             fail "docker build --target $target"; }
  done
}

check_api() {
  step "api as OpenShift runs it (UID $OPENSHIFT_UID:0, read-only, no capabilities)"
  docker_ run --detach --name api "${OPENSHIFT_RUN[@]}" "${API_AUTH[@]}" --publish 127.0.0.1::8080 \
    --health-interval 2s --health-start-period 60s "credit-risk-api:$TAG" >/dev/null
  local port url
  port=$(host_port api 8080)
  url="http://127.0.0.1:$port"
  wait_ready "$url" 90 || { docker_ logs api 2>&1 | tail -n 40 >&2; fail "/ready never 200"; }
  curl -fsS "$url/ready"; echo
  smoke_predict "$url" | tee "$WORK/predict.json"; echo
  grep -q '"probability' "$WORK/predict.json" || fail "/predict gave no probability"
  [ "$(docker_ exec api id -u)" = "$OPENSHIFT_UID" ] || fail "api does not run as the random UID"
  # The drift report is computed in the API too: it must work with serving's libraries.
  local monitoring
  # A window computed in the worker (numpy only: the api image has no sklearn or pandas).
  monitoring=$(authed_curl -sS -o /dev/null -w '%{http_code}' "$url/monitoring?last=50")
  # Anonymous clients get nothing but the probes.
  [ "$(curl -sS -o /dev/null -w '%{http_code}' "$url/model")" = 401 ] ||
    fail "GET /model without a credential did not answer 401"
  [ "$monitoring" = 200 ] || fail "GET /monitoring answered $monitoring in the api image"
  local deadline=$((SECONDS + 60)) health
  until health=$(docker_ inspect -f '{{.State.Health.Status}}' api) && [ "$health" = healthy ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "HEALTHCHECK status stayed $health"
    sleep 1
  done
  echo "HEALTHCHECK: $health"
  docker_ stop --time 40 api >/dev/null
  local code
  code=$(docker_ inspect -f '{{.State.ExitCode}}' api)
  [ "$code" = 0 ] || { docker_ logs api 2>&1 | tail -n 20 >&2; fail "api exited $code on SIGTERM"; }
  echo "SIGTERM: exit code 0"
  docker_ rm api >/dev/null
}

check_jobs() {
  step "trainer image as OpenShift runs it: a quick training into /tmp"
  docker_ run --rm "${OPENSHIFT_RUN[@]}" "${JOB_KEYS[@]}" "credit-risk-api-trainer:$TAG" \
    python -m ml -q train --out /tmp/models $QUICK_TRAIN
  local name command
  for name in monitor retrain; do
    mapfile -t command < <(cronjob_command "$name")
    step "CronJob $name: ${command[*]}"
    docker_ run --rm "${OPENSHIFT_RUN[@]}" "${JOB_KEYS[@]}" --env DATABASE_URL="$1" --network "$2" \
      "credit-risk-api-trainer:$TAG" "${command[@]}" > "$WORK/job-$name.log" 2>&1 || {
      tail -n 30 "$WORK/job-$name.log" >&2; fail "the $name job failed"; }
    tail -n 5 "$WORK/job-$name.log"
  done
}

check_compose() {
  command -v docker-compose >/dev/null || apt_install docker-compose
  step "compose.yaml up: trainer -> models volume -> api, PostgreSQL"
  export API_IMAGE="credit-risk-api:$TAG" TRAINER_IMAGE="credit-risk-api-trainer:$TAG"
  export TRAIN_ARGS=$QUICK_TRAIN
  export API_PORT=0
  COMPOSE_UP=1
  compose up --detach --no-build api > "$WORK/compose-up.log" 2>&1 || {
    cat "$WORK/compose-up.log" >&2; fail "docker-compose up"; }
  local port url
  port=$(host_port "$(compose ps -q api)" 8080)
  url="http://127.0.0.1:$port"
  wait_ready "$url" 120 || fail "/ready of the compose api never 200"
  smoke_predict "$url" | grep -q '"probability' || fail "/predict through compose"
  # Stored in PostgreSQL (write-behind: give the writer a moment).
  local stored=0 deadline=$((SECONDS + 20))
  until [ "${stored:-0}" -ge 1 ] || [ "$SECONDS" -ge "$deadline" ]; do
    sleep 0.5
    stored=$(compose exec -T db psql -U credit -d credit -tAc \
      'SELECT count(*) FROM predictions' 2>/dev/null | tr -dc 0-9)
  done
  [ "${stored:-0}" -ge 1 ] || fail "the prediction did not reach PostgreSQL"
  echo "scored through compose: $stored prediction(s) in PostgreSQL"
  # The CronJobs' commands against the same database, on the compose network.
  check_jobs "postgresql+psycopg://credit:${POSTGRES_PASSWORD:-credit}@db:5432/credit" \
    "${PROJECT}_default"
  # The monitor job's report, saved in PostgreSQL, is what the api serves and exports.
  authed_curl -fsS "$url/monitoring" | grep -q '"age_seconds"' ||
    fail "GET /monitoring did not serve the monitor job's report"
  authed_curl -fsS "$url/metrics" | grep -q '^credit_api_monitoring_report_timestamp_seconds' ||
    fail "/metrics did not export the monitor job's report"
  echo "the api serves the monitor job's report (GET /monitoring, /metrics)"
  compose down --volumes --timeout 20 >/dev/null 2>&1
  COMPOSE_UP=0
}

prune() {
  # The data root is kept: drop what this run made unreachable, keep the layer cache.
  docker_ image prune --force >/dev/null
  docker_ builder prune --force --keep-storage 6gb >/dev/null 2>&1 || true
}

baseline() {  # REF: build REF's api image on the same base, for the size comparison
  local tree=$WORK/baseline
  mkdir -p "$tree"
  git archive "$1" | tar -x -C "$tree"
  # Its Dockerfile as it was, on the base this run uses, with a quick model like ours.
  sed -i -e '/^# syntax=/d' -e "s|^FROM registry.access.redhat.com/ubi9/python-311:1 |FROM $2 |" \
    -e "s|python -m ml train$|python -m ml train $QUICK_TRAIN|" "$tree/Dockerfile"
  step "baseline: the api image of $1 on the same base"
  DOCKER_BUILDKIT=1 docker_ build --progress plain --target api --tag "credit-risk-api:baseline" \
    "$tree" > "$WORK/build-baseline.log" 2>&1 || { tail -n 30 "$WORK/build-baseline.log" >&2;
                                                  fail "baseline build"; }
}

layer_mb() {  # IMAGE: size in MB of its pip install layer
  docker_ history --human=false --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$1" \
    | awk -F'\t' '/pip install/ {printf "%d", $1 / 1000000; exit}'
}

report_sizes() {
  [ -z "${IMAGE_CHECK_BASELINE:-}" ] || baseline "$IMAGE_CHECK_BASELINE" "$BASE_USED"
  step "image sizes"
  local image
  local images=("credit-risk-api:$TAG" "credit-risk-api-trainer:$TAG")
  [ -z "${IMAGE_CHECK_BASELINE:-}" ] || images+=("credit-risk-api:baseline")
  for image in "${images[@]}"; do
    printf '%-36s image %5d MB   pip install layer %4d MB\n' "$image" \
      "$(( $(docker_ image inspect -f '{{.Size}}' "$image") / 1000000 ))" "$(layer_mb "$image")"
  done
}

start_engine
make_keys
build_images
check_api
check_compose
report_sizes
[ -z "${DOCKER_OWNED:-}" ] || prune
