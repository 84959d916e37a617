#!/usr/bin/env bash
# Mutation testing of the core rules (issue 15): cargo-mutants mutates the
# modules below and checks each mutant against their unit tests and
# tests/wire.rs (codec and manifest), run with cargo-nextest so a caught mutant
# stops at its first failing test. Exclusions, each with its reason, are in
# .cargo/mutants.toml.
#
#   cargo install cargo-mutants cargo-nextest   # once
#   scripts/mutants.sh [OUT_DIR]                # results in OUT_DIR/mutants.out
#   ITERATE=1 scripts/mutants.sh [OUT_DIR]      # again, skipping mutants caught last time
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/mutants}
mkdir -p "$out"
files=(src/wire/mod.rs src/manifest/mod.rs src/bitfield.rs src/picker/mod.rs src/peers/mod.rs src/ratelimit.rs src/datadir/mod.rs
  src/fetch/schedule.rs src/fetch/blobs.rs src/noise.rs src/identity.rs src/ticket.rs src/datadir/remembered.rs)
args=()
for f in "${files[@]}"; do args+=(--file "$f"); done
start=$(date +%s)
# -C: build and run only the library's unit tests and tests/wire.rs, not every test binary.
iterate=()
[ -n "${ITERATE:-}" ] && iterate=(--iterate)
cargo mutants --profile mutants --test-tool nextest --jobs "${JOBS:-2}" --timeout 60 --output "$out" "${iterate[@]}" "${args[@]}" \
  -C --lib -C --test=wire \
  -- -E 'test(/^(wire|manifest|bitfield|picker|peers|ratelimit|datadir|fetch|noise|identity|ticket|connection)::/) | binary(wire)' \
  || true
echo "took $(( $(date +%s) - start )) s"
for kind in caught missed timeout unviable; do
  echo "$kind: $(wc -l < "$out/mutants.out/$kind.txt")"
done
