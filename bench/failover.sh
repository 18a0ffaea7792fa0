#!/usr/bin/env bash
# Issue 17: Patroni failover time on this node, N runs (default 5) of the cluster crate's
# two-member test (embedded etcd, ttl 10 / loop_wait 1 / retry_timeout 4): seconds from SIGKILL of
# the primary's Patroni and postmaster to the first write committed on the promoted member
# (directly, not through the pooler: pgbay does not route HA services yet).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo test -q -p pgbay-cluster --test patroni --no-run >/dev/null 2>&1
for i in $(seq 1 "$runs"); do
    out=$(cargo test -q -p pgbay-cluster --test patroni -- --nocapture 2>&1)
    echo "$out" | grep -o 'FAILOVER_SECONDS=[0-9.]*' | sed "s/^/run $i: /"
done
