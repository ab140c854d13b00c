#!/usr/bin/env bash
# A sustained-load soak of the distributed mesh: two registries, two
# schedulers, three executors and a gateway as processes on PostgreSQL and a
# Kafka-protocol broker, tasks at a fixed rate through both schedulers, an
# executor killed and restarted every 20 s. Prints accepted, completed and
# dead runs, attempts recorded twice, and the memory of the long-lived
# processes every 5 s; fails if an attempt is recorded twice, a run is lost,
# or memory grows after warm-up (the first quarter).
#
#   scripts/soak.sh [--minutes N] [--rate TASKS_PER_SECOND]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=2
rate=200
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        *) echo "usage: scripts/soak.sh [--minutes N] [--rate TASKS_PER_SECOND]" >&2; exit 2 ;;
    esac
done
source scripts/services.sh
log "soak: $minutes min at $rate tasks/s"
SOAK_SECONDS=$((minutes * 60)) SOAK_RATE=$rate \
    cargo test -p devcycle-cli --test topology --quiet soak -- --ignored --nocapture
