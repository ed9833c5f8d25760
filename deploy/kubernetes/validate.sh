#!/usr/bin/env bash
# Renders every kustomization under deploy/kubernetes with kubectl's built-in kustomize and
# validates each rendered object offline against the Kubernetes JSON schemas
# (kubernetes-validate, --strict: unknown fields fail). Also checks that every `env:NAME`
# in the shipped routes.toml has a key in the example overlay's webhook Secret.
#
#   deploy/kubernetes/validate.sh              validate the real manifests
#   deploy/kubernetes/validate.sh --self-test  prove a broken manifest fails
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=${K8S_VERSION:-1.32.0}
targets=(base overlays/example overlays/pod-tls overlays/cluster)

command -v kubectl >/dev/null || { echo "validate.sh: kubectl not found (it carries kustomize)"; exit 1; }
python3 -m kubernetes_validate --version >/dev/null 2>&1 || { echo "validate.sh: kubernetes-validate not found (pip install kubernetes-validate)"; exit 1; }

validate_dir() { # $1: kustomization dir; prints problems, returns non-zero on any
    local rendered
    rendered=$(mktemp)
    if ! kubectl kustomize "$1" >"$rendered" 2>"$rendered.err"; then
        cat "$rendered.err"; rm -f "$rendered" "$rendered.err"; return 1
    fi
    # CRD kinds (ServiceMonitor, PrometheusRule) have no bundled schema: warned, not failed.
    if ! python3 -m kubernetes_validate --strict --quiet -k "$k8s_version" "$rendered"; then
        rm -f "$rendered" "$rendered.err"; return 1
    fi
    rm -f "$rendered" "$rendered.err"
}

if [ "${1:-}" = "--self-test" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp -rL "$here/base" "$tmp/base"
    # A typo'd field and a wrong type: both must be caught.
    sed -i 's/^  replicas: 1$/  replicas: "one"/' "$tmp/base/statefulset.yaml"
    sed -i 's/^          readinessProbe:$/          readinesProbe:/' "$tmp/base/statefulset.yaml"
    grep -q 'replicas: "one"' "$tmp/base/statefulset.yaml" || { echo "self-test: could not break the manifest"; exit 1; }
    if validate_dir "$tmp/base" >/dev/null 2>&1; then
        echo "self-test FAILED: a broken manifest passed validation"; exit 1
    fi
    echo "self-test ok: the broken manifest was rejected"
    exit 0
fi

for t in "${targets[@]}"; do
    echo "validating $t (Kubernetes $k8s_version)"
    validate_dir "$here/$t"
done

# routes.toml <-> Secret: every env:NAME the routes use must exist in the example Secret.
kubectl kustomize "$here/overlays/example" | python3 -c '
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
routes = next(d for d in docs if d["kind"] == "ConfigMap" and "routes.toml" in d.get("data", {}))["data"]["routes.toml"]
keys = set()
for d in docs:
    if d["kind"] == "Secret":
        keys |= set((d.get("data") or {}).keys()) | set((d.get("stringData") or {}).keys())
wanted = set(re.findall(r"env:([A-Za-z_][A-Za-z0-9_]*)", routes))
missing = sorted(wanted - keys)
if missing:
    sys.exit("routes.toml uses env vars the example Secret does not define: " + ", ".join(missing))
print("routes.toml env references all present in the example Secret:", ", ".join(sorted(wanted)))
'
echo "all manifests valid"
