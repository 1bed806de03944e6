#!/usr/bin/env bash
# The kind path, for machines with Docker: the real images on a real (kind) cluster, installed by
# the real chart. CI has no Docker engine, so CI never runs this; tests/unit/test_kind_*.py
# checks it on paper and runs it against stand-in docker/kind/helm/kubectl commands.
#
# Usage: hack/kind/kind.sh up|e2e|down   (the Makefile: make kind-up | kind-e2e | kind-down)
#   up    create the kind cluster (if missing), build both images, load them into the cluster and
#         install charts/newfuse-operator with them and its in-chart trial Redis
#   e2e   up, then the sample fleet (crds/samples/summarizer.yaml) in a namespace enforcing the
#         restricted Pod Security Standard, and tasks through it with the `newfuse` CLI
#   down  delete the kind cluster
#
# Images are tagged <IMAGE_TAG>-<first 12 hex digits of the image ID>, so a rebuild that changes
# anything gets a new tag and the chart (and the fleet) roll out; an unchanged one is a no-op.
#
# The chart runs with its trial Redis (its password in a Secret, which agents read through
# redis.agentSecret) and signing on (its default). For the e2e fleet's namespace the script does
# what the chart's NOTES ask of a user: it copies the Redis URL and the signing key into the
# Secrets the operator tells agents to read there (NEWFUSE_AGENT_REDIS_SECRET and
# NEWFUSE_AGENT_SIGNING_SECRET in its Deployment; with signing.agentsByDefault off, the fleet
# names its key's Secret in spec.signing instead), and hands both to the CLI through its
# environment (never on a command line).
#
# Settings (environment): KIND_CLUSTER (newfuse), KIND_KUBECONFIG (.local/kind/kubeconfig),
# IMAGE_TAG (dev), BASE_IMAGE (python:3.11-slim, both images' BASE), RELEASE (newfuse),
# OPERATOR_NAMESPACE (newfuse-system), E2E_NAMESPACE (newfuse-e2e), E2E_TASKS (5),
# WAIT_TIMEOUT (300s), and the tools: DOCKER, KIND, HELM, KUBECTL (default: .local/bin, then
# PATH), VENV_BIN (.venv/bin: python and the newfuse CLI).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

KIND_CLUSTER=${KIND_CLUSTER:-newfuse}
KIND_KUBECONFIG=${KIND_KUBECONFIG:-$ROOT/.local/kind/kubeconfig}
IMAGE_TAG=${IMAGE_TAG:-dev}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
OPERATOR_REPOSITORY=newfuse/operator
AGENT_REPOSITORY=newfuse/agent
RELEASE=${RELEASE:-newfuse}
CHART=charts/newfuse-operator
OPERATOR_NAMESPACE=${OPERATOR_NAMESPACE:-newfuse-system}
E2E_NAMESPACE=${E2E_NAMESPACE:-newfuse-e2e}
E2E_TASKS=${E2E_TASKS:-5}
SAMPLE=crds/samples/summarizer.yaml
FLEET=summarizer
# redis.agentSecret.name: the Secret agents read their Redis URL from, in their own namespace.
AGENT_REDIS_SECRET=newfuse-redis-url
# The signing key's Secret in the e2e namespace when the chart names none (agentsByDefault off).
FLEET_SIGNING_SECRET=newfuse-signing
WAIT_TIMEOUT=${WAIT_TIMEOUT:-300s}
DOCKER=${DOCKER:-docker}
KIND=${KIND:-kind}
HELM=${HELM:-}
KUBECTL=${KUBECTL:-}
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}

# Set by build_image(s), e2e and start_port_forward.
BUILT_TAG=
OPERATOR_TAG=
AGENT_REF=
SECRETS_DIR=
PF_PID=
PF_LOG=
PF_PORT=

log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

cleanup() {
  if [[ -n $PF_PID ]]; then
    kill "$PF_PID" 2>/dev/null || true
    wait "$PF_PID" 2>/dev/null || true
  fi
  if [[ -n $PF_LOG ]]; then rm -f "$PF_LOG"; fi
  if [[ -n $SECRETS_DIR ]]; then rm -rf "$SECRETS_DIR"; fi
}
trap cleanup EXIT

# --- tools ------------------------------------------------------------------------------------

need_docker() {
  command -v "$DOCKER" >/dev/null 2>&1 ||
    die "docker not found on PATH: install Docker Engine or Docker Desktop (https://docs.docker.com/get-docker/)"
  "$DOCKER" info >/dev/null 2>&1 ||
    die "docker is installed but its daemon does not answer ('docker info' fails): start Docker, and check that your user may use it"
}

need_kind() {
  command -v "$KIND" >/dev/null 2>&1 ||
    die "kind not found on PATH: 'go install sigs.k8s.io/kind@latest', or see https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
}

# find_tool NAME: the pinned build linked in .local/bin (make cluster-up, or
# `PYTHONPATH=hack .venv/bin/python -m localcluster build`), else NAME on PATH.
find_tool() {
  local name=$1
  if [[ -x "$ROOT/.local/bin/$name" ]]; then
    echo "$ROOT/.local/bin/$name"
  elif command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  else
    die "$name not found in .local/bin or on PATH: install it (https://helm.sh/docs/intro/install/, https://kubernetes.io/docs/tasks/tools/), or build the pinned one from source (needs Go): PYTHONPATH=hack .venv/bin/python -m localcluster build"
  fi
}

need_helm_kubectl() {
  if [[ -z $HELM ]]; then HELM=$(find_tool helm); fi
  if [[ -z $KUBECTL ]]; then KUBECTL=$(find_tool kubectl); fi
}

need_venv() {
  [[ -x "$VENV_BIN/python" && -x "$VENV_BIN/newfuse" ]] ||
    die "no $VENV_BIN/newfuse: run 'make deps' first (it installs the newfuse CLI into .venv)"
}

# Every kubectl call goes to the kind cluster, never to the user's current context.
kubectl() { "$KUBECTL" --kubeconfig "$KIND_KUBECONFIG" "$@"; }

# --- up ---------------------------------------------------------------------------------------

ensure_cluster() {
  mkdir -p "$(dirname "$KIND_KUBECONFIG")"
  local clusters
  clusters=$("$KIND" get clusters)
  if grep -qx "$KIND_CLUSTER" <<<"$clusters"; then
    log "kind cluster '$KIND_CLUSTER' exists"
  else
    log "creating kind cluster '$KIND_CLUSTER'"
    "$KIND" create cluster --name "$KIND_CLUSTER" --kubeconfig "$KIND_KUBECONFIG" --wait 120s
  fi
  # Written on every run: the API server's port changes when Docker restarts the node.
  "$KIND" get kubeconfig --name "$KIND_CLUSTER" >"$KIND_KUBECONFIG"
  log "kubeconfig: $KIND_KUBECONFIG"
}

# build_image REPOSITORY TARGET: builds the root Dockerfile's TARGET (operator or agent) and sets
# BUILT_TAG to the tag it built (IMAGE_TAG-<image ID prefix>). Not called through $(...): errexit
# is off in command substitutions, and a failed build must not go on to tag the previous image.
build_image() {
  local repository=$1 target=$2 id
  log "building $repository from Dockerfile, target $target (base $BASE_IMAGE)"
  "$DOCKER" build -f Dockerfile --target "$target" --build-arg "BASE=$BASE_IMAGE" \
    -t "$repository:$IMAGE_TAG" .
  id=$("$DOCKER" image inspect --format '{{.Id}}' "$repository:$IMAGE_TAG")
  id=${id#sha256:}
  [[ $id =~ ^[0-9a-f]{12} ]] || die "unexpected image ID for $repository:$IMAGE_TAG: '$id'"
  BUILT_TAG="$IMAGE_TAG-${id:0:12}"
  "$DOCKER" tag "$repository:$IMAGE_TAG" "$repository:$BUILT_TAG"
}

build_images() {
  build_image "$OPERATOR_REPOSITORY" operator
  OPERATOR_TAG=$BUILT_TAG
  build_image "$AGENT_REPOSITORY" agent
  AGENT_REF="$AGENT_REPOSITORY:$BUILT_TAG"
  log "loading $OPERATOR_REPOSITORY:$OPERATOR_TAG and $AGENT_REF into kind cluster '$KIND_CLUSTER'"
  "$KIND" load docker-image --name "$KIND_CLUSTER" "$OPERATOR_REPOSITORY:$OPERATOR_TAG" "$AGENT_REF"
}

install_chart() {
  log "installing $CHART as release '$RELEASE' in namespace '$OPERATOR_NAMESPACE'"
  # pullPolicy Never: the pods run the image just loaded, or fail with ErrImageNeverPull.
  # redis.agentSecret: the trial Redis has a password, which the operator will not put in agent
  # pods as a plain value; agents read it from this Secret in their own namespace (see e2e).
  "$HELM" upgrade --install "$RELEASE" "$CHART" \
    --kubeconfig "$KIND_KUBECONFIG" \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace \
    --set "image.repository=$OPERATOR_REPOSITORY" \
    --set "image.tag=$OPERATOR_TAG" \
    --set image.pullPolicy=Never \
    --set redis.internal.enabled=true \
    --set "redis.agentSecret.name=$AGENT_REDIS_SECRET" \
    --set redis.agentSecret.key=url \
    --wait --timeout "$WAIT_TIMEOUT"
  local deployments deployment
  deployments=$(kubectl -n "$OPERATOR_NAMESPACE" get deployments \
    -l "app.kubernetes.io/instance=$RELEASE" -o name)
  [[ -n $deployments ]] || die "release '$RELEASE' has no Deployment in '$OPERATOR_NAMESPACE'"
  for deployment in $deployments; do
    kubectl -n "$OPERATOR_NAMESPACE" rollout status "$deployment" --timeout "$WAIT_TIMEOUT"
  done
}

up() {
  need_docker
  need_kind
  need_helm_kubectl
  ensure_cluster
  build_images
  install_chart
  log "up: operator $OPERATOR_REPOSITORY:$OPERATOR_TAG, agent image $AGENT_REF"
  log "next: export KUBECONFIG=$KIND_KUBECONFIG; make kind-e2e; make kind-down"
}

# --- e2e --------------------------------------------------------------------------------------

# render_sample [SECRET/KEY]: the sample fleet, running the agent image just loaded (and never
# pulling it); with SECRET/KEY, its own signing key's Secret (spec.signing).
render_sample() {
  "$VENV_BIN/python" - "$SAMPLE" "$FLEET" "$AGENT_REF" "${1:-}" <<'PY'
import sys

import yaml

path, fleet, image, signing = sys.argv[1:]
with open(path) as f:
    body = yaml.safe_load(f)
if body["metadata"]["name"] != fleet:
    sys.exit(f"{path}: the fleet is {body['metadata']['name']!r}, kind.sh expects {fleet!r}")
body["spec"]["image"] = image
body["spec"]["imagePullPolicy"] = "Never"
if signing:
    name, key = signing.split("/", 1)
    body["spec"]["signing"] = {"keySecretRef": {"name": name, "key": key}}
print(yaml.safe_dump(body, sort_keys=False), end="")
PY
}

# redis_url_part host|port|local [PORT]: of the URL in $REDIS_URL (kept out of command lines, it
# holds a password): its host, its port, or the same URL (credentials, database) via 127.0.0.1:PORT.
redis_url_part() {
  "$VENV_BIN/python" - "$@" <<'PY'
import os
import sys
from urllib.parse import urlsplit

parts = urlsplit(os.environ["REDIS_URL"])
if sys.argv[1] == "host":
    print(parts.hostname)
elif sys.argv[1] == "port":
    print(parts.port or 6379)
else:
    auth = parts.netloc.rpartition("@")[0]
    print(parts._replace(netloc=(auth + "@" if auth else "") + "127.0.0.1:" + sys.argv[2]).geturl())
PY
}

# operator_deployment: the release's Deployment whose first container is "operator".
operator_deployment() {
  kubectl -n "$OPERATOR_NAMESPACE" get deployments -l "app.kubernetes.io/instance=$RELEASE" \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.template.spec.containers[0].name}{"\n"}{end}' |
    awk '$2 == "operator" { print $1; exit }'
}

# operator_secret_ref DEPLOYMENT VAR: "<secret> <key>" that the operator's env VAR comes from
# (" " when VAR is a plain value or absent).
operator_secret_ref() {
  kubectl -n "$OPERATOR_NAMESPACE" get deployment "$1" -o jsonpath="{range .spec.template.spec.containers[?(@.name==\"operator\")].env[?(@.name==\"$2\")]}{.valueFrom.secretKeyRef.name}{\" \"}{.valueFrom.secretKeyRef.key}{end}"
}

# operator_env_value DEPLOYMENT VAR: the operator's env VAR as a plain value ("" if none).
operator_env_value() {
  kubectl -n "$OPERATOR_NAMESPACE" get deployment "$1" -o jsonpath="{range .spec.template.spec.containers[?(@.name==\"operator\")].env[?(@.name==\"$2\")]}{.value}{end}"
}

# secret_value SECRET KEY: one decoded value of a Secret in the operator's namespace.
secret_value() {
  kubectl -n "$OPERATOR_NAMESPACE" get secret "$1" -o go-template="{{index .data \"$2\" | base64decode}}"
}

# copy_secret NAME/KEY VALUE: a Secret in the e2e namespace; the value goes through a private
# file, never through a command line.
copy_secret() {
  set -- "${1%%/*}" "${1#*/}" "$2"
  printf '%s' "$3" >"$SECRETS_DIR/$2"
  kubectl -n "$E2E_NAMESPACE" create secret generic "$1" --from-file="$2=$SECRETS_DIR/$2" \
    --dry-run=client -o yaml | kubectl -n "$E2E_NAMESPACE" apply -f -
  rm -f "$SECRETS_DIR/$2"
}

# start_port_forward SERVICE NAMESPACE PORT: a free local port (PF_PORT) to it, until exit.
start_port_forward() {
  local service=$1 namespace=$2 port=$3
  PF_LOG=$(mktemp "${TMPDIR:-/tmp}/newfuse-kind-pf.XXXXXX")
  # exec: PF_PID must be kubectl itself (not a subshell running it), so cleanup stops it.
  (exec "$KUBECTL" --kubeconfig "$KIND_KUBECONFIG" -n "$namespace" \
    port-forward "service/$service" ":$port" >"$PF_LOG" 2>&1) &
  PF_PID=$!
  for _ in $(seq 1 60); do
    PF_PORT=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "$PF_LOG" | head -n 1)
    [[ -z $PF_PORT ]] || break
    kill -0 "$PF_PID" 2>/dev/null || die "port-forward to service/$service exited: $(cat "$PF_LOG")"
    sleep 0.5
  done
  [[ -n $PF_PORT ]] || die "port-forward to service/$service did not start in 30 s: $(cat "$PF_LOG")"
  log "service/$service (Redis) forwarded to 127.0.0.1:$PF_PORT"
}

e2e() {
  need_venv
  up
  SECRETS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/newfuse-kind-secrets.XXXXXX")
  local deployment redis_ref agent_redis signing_ref agent_signing signing_key="" fleet_signing=""
  deployment=$(operator_deployment)
  [[ -n $deployment ]] || die "release '$RELEASE' has no operator Deployment in '$OPERATOR_NAMESPACE'"
  # The chart's own wiring says where the Redis URL and the signing key are, and where agents
  # look for them in their namespace.
  redis_ref=$(operator_secret_ref "$deployment" NEWFUSE_REDIS_URL)
  [[ $redis_ref == ?*" "?* ]] ||
    die "the operator's NEWFUSE_REDIS_URL does not come from a Secret: is redis.internal.enabled?"
  export REDIS_URL
  REDIS_URL=$(secret_value "${redis_ref% *}" "${redis_ref#* }")
  agent_redis=$(operator_env_value "$deployment" NEWFUSE_AGENT_REDIS_SECRET)
  signing_ref=$(operator_secret_ref "$deployment" NEWFUSE_SIGNING_KEY)
  agent_signing=$(operator_env_value "$deployment" NEWFUSE_AGENT_SIGNING_SECRET)
  if [[ $signing_ref == ?*" "?* ]]; then
    signing_key=$(secret_value "${signing_ref% *}" "${signing_ref#* }")
    if [[ -z $agent_signing ]]; then
      fleet_signing="$FLEET_SIGNING_SECRET/key"
      agent_signing=$fleet_signing
    fi
  fi

  log "namespace '$E2E_NAMESPACE', enforcing the restricted Pod Security Standard"
  kubectl create namespace "$E2E_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$E2E_NAMESPACE" --overwrite \
    pod-security.kubernetes.io/enforce=restricted
  if [[ -n $agent_redis ]]; then copy_secret "$agent_redis" "$REDIS_URL"; fi
  if [[ -n $signing_key ]]; then copy_secret "$agent_signing" "$signing_key"; fi
  # A fresh fleet each run, so Available below means the image just built.
  kubectl -n "$E2E_NAMESPACE" delete "newfuseagent/$FLEET" --ignore-not-found --wait \
    --timeout "$WAIT_TIMEOUT"
  log "applying $SAMPLE with image $AGENT_REF${fleet_signing:+, signing key from $fleet_signing}"
  render_sample "$fleet_signing" | kubectl -n "$E2E_NAMESPACE" apply -f -
  kubectl -n "$E2E_NAMESPACE" wait --for=condition=Available "newfuseagent/$FLEET" \
    --timeout "$WAIT_TIMEOUT"
  kubectl -n "$E2E_NAMESPACE" get newfuseagent "$FLEET" -o wide

  # The trial Redis' URL names its Service: redis://:<password>@<service>.<namespace>.svc:6379/0.
  local host
  host=$(redis_url_part host)
  [[ $host == *.*.svc || $host == *.*.svc.cluster.local ]] ||
    die "the operator's Redis ($host) is not a Service of the cluster: kind.sh expects the in-chart one"
  start_port_forward "${host%%.*}" "$(cut -d. -f2 <<<"$host")" "$(redis_url_part port)"

  # The CLI takes the Redis URL and the signing key from its environment.
  local out cli=("$VENV_BIN/newfuse") fleet_args=("$FLEET" --namespace "$E2E_NAMESPACE")
  export NEWFUSE_REDIS_URL NEWFUSE_SIGNING_KEY
  NEWFUSE_REDIS_URL=$(redis_url_part local "$PF_PORT")
  NEWFUSE_SIGNING_KEY=$signing_key

  log "one echo task, waiting for its result"
  out=$("${cli[@]}" task submit "${fleet_args[@]}" --handler echo \
    --payload '{"hello": "kind"}' --wait --timeout 120) ||
    die "the echo task did not succeed: $out"
  printf '%s\n' "$out"
  grep -q '"hello": "kind"' <<<"$out" || die "the echo task's result does not hold its input"

  log "$E2E_TASKS more echo tasks"
  out=$("${cli[@]}" task submit "${fleet_args[@]}" --handler echo --payload '"bulk"' \
    --count "$E2E_TASKS" --wait --timeout 120) || die "the bulk submit failed: $out"
  printf '%s\n' "$out"
  grep -qx "$E2E_TASKS succeeded, 0 failed" <<<"$out" ||
    die "expected '$E2E_TASKS succeeded, 0 failed'"

  "${cli[@]}" agents "${fleet_args[@]}"
  log "e2e passed: $((E2E_TASKS + 1)) tasks through $E2E_NAMESPACE/$FLEET on kind cluster '$KIND_CLUSTER'"
}

# --- down -------------------------------------------------------------------------------------

down() {
  need_kind
  "$KIND" delete cluster --name "$KIND_CLUSTER"
  rm -f "$KIND_KUBECONFIG"
}

case "${1:-}" in
  up) up ;;
  e2e) e2e ;;
  down) down ;;
  *)
    echo "usage: $0 up|e2e|down" >&2
    exit 2
    ;;
esac
