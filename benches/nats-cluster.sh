#!/usr/bin/env bash
# Starts a NATS JetStream cluster of N nodes on 127.0.0.1 for the cluster-mode benchmark
# (BENCHMARKS.md, "Cluster mode"), storage in DIR; prints the URLs for WEBHOOK_RELAY_NATS.
#   benches/nats-cluster.sh 3 /tmp/nats3 4300     # client ports 4300..4302
#   kill $(cat /tmp/nats3/pids)                   # stop it
set -euo pipefail
n=${1:?nodes} dir=${2:?dir} base=${3:-4300}
mkdir -p "$dir"; : >"$dir/pids"
routes=$(for i in $(seq 0 $((n - 1))); do printf 'nats://127.0.0.1:%d,' $((base + 100 + i)); done)
urls=""
for i in $(seq 0 $((n - 1))); do
    args=(-a 127.0.0.1 -p $((base + i)) -js -n "node-$i" -sd "$dir/js-$i")
    if [ "$n" -gt 1 ]; then
        args+=(--cluster_name bench --cluster "nats://127.0.0.1:$((base + 100 + i))" --routes "${routes%,}")
    fi
    nats-server "${args[@]}" >"$dir/node-$i.log" 2>&1 &
    echo $! >>"$dir/pids"
    urls+="nats://127.0.0.1:$((base + i)),"
done
echo "${urls%,}"
