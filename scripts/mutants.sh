#!/usr/bin/env bash
# Mutation testing of the core rules (issue 15): each module is mutated by
# cargo-mutants and checked against its own unit tests (plus tests/wire.rs
# for the codec and manifest), with cargo-nextest so a caught mutant stops at
# the first failing test. Prints one summary line per module and the totals.
#
#   cargo install cargo-mutants cargo-nextest   # once
#   scripts/mutants.sh [OUT_DIR] [MODULE...]     # default: every module below
#
# Exclusions (mutants that cannot be caught, each with its reason) are in
# .cargo/mutants.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/mutants}
shift || true
declare -A filter=(
  [src/wire.rs]='test(/^wire::/) | binary(wire)'
  [src/manifest.rs]='test(/^manifest::/) | binary(wire)'
  [src/bitfield.rs]='test(/^bitfield::/) | binary(wire)'
  [src/picker.rs]='test(/^picker::/)'
  [src/peers.rs]='test(/^peers::/)'
  [src/ratelimit.rs]='test(/^ratelimit::/)'
  [src/datadir.rs]='test(/^datadir::/)'
  [src/fetch/schedule.rs]='test(/^fetch::/)'
  [src/fetch/blobs.rs]='test(/^fetch::/)'
)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(src/wire.rs src/manifest.rs src/bitfield.rs src/picker.rs src/peers.rs \
  src/ratelimit.rs src/datadir.rs src/fetch/schedule.rs src/fetch/blobs.rs)
mkdir -p "$out"
start=$(date +%s)
for m in "${modules[@]}"; do
  name=$(echo "$m" | tr '/.' '__')
  cargo mutants --profile mutants --test-tool nextest --jobs "${JOBS:-2}" --timeout 60 \
    --output "$out/$name" --file "$m" -- --lib --test wire -E "${filter[$m]}" \
    > "$out/$name.log" 2>&1 || true
  echo "$m: $(tail -n 1 "$out/$name.log")"
done
echo "total: $(( $(date +%s) - start )) s"
for kind in caught missed timeout unviable; do
  echo "$kind: $(cat "$out"/*/mutants.out/$kind.txt 2>/dev/null | wc -l)"
done
