#!/usr/bin/env bash
# Runs every check and test of devcycle, starting what the tests need (see
# scripts/services.sh): cargo fmt --check, cargo clippy -D warnings, the
# whole test suite, then a sustained-load soak of the distributed mesh for
# DEVCYCLE_SOAK_MINUTES (default 2; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
scripts/check-deploy.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace --quiet "$@"
log "all tests passed"
minutes=${DEVCYCLE_SOAK_MINUTES:-2}
if [ "$minutes" != 0 ]; then
    scripts/soak.sh --minutes "$minutes"
fi
