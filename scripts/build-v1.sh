#!/usr/bin/env bash
# Builds the last wire-protocol-v1 pex (commit 06f5fac, before the Noise
# transport) as target/v1/release/pex, the baseline `cargo bench --bench
# transfer` compares v2 against. Needs the git history (not a shallow clone).
set -euo pipefail
cd "$(dirname "$0")/.."
V1=06f5fac
src=target/v1-src
if [ ! -d "$src" ]; then
    git worktree add --detach "$src" "$V1" >/dev/null
fi
cargo build --release --locked --manifest-path "$src/Cargo.toml" --target-dir target/v1 --bin pex
echo "built $(pwd)/target/v1/release/pex (wire protocol v1, commit $V1)"
