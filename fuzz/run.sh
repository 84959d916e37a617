#!/usr/bin/env bash
# Builds and runs one cargo-fuzz target for a while, then prints libFuzzer's final stats.
#
#   fuzz/run.sh TARGET [SECONDS]      TARGET: frame_decoder | manifest_parser; SECONDS: 600
#
# Seeds in fuzz/seeds/TARGET/ are copied into fuzz/corpus/TARGET/ (git-ignored) first, so
# the corpus grows across runs. One libFuzzer job, at nice 10. A crash is saved under
# fuzz/artifacts/TARGET/ and makes this script exit non-zero; the full log is kept in
# fuzz/target/logs/TARGET.log.
#
# Environment:
#   SANITIZER=address|none   default address; `none` if ASan fails to link on a machine
#   FUZZ_ARGS="..."          extra libFuzzer flags, e.g. "-max_len=65536"
#
# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer, ...). With only a stable
# toolchain, RUSTC_BOOTSTRAP=1 lets stable rustc accept them; it is set below.
set -euo pipefail

target="${1:?usage: fuzz/run.sh TARGET [SECONDS]}"
seconds="${2:-600}"
sanitizer="${SANITIZER:-address}"

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."

if [[ ! -f "$fuzz_dir/fuzz_targets/$target.rs" ]]; then
    echo "no such target: $target (have: $(cd "$fuzz_dir/fuzz_targets" && ls ./*.rs | sed 's|^\./||; s|\.rs$||' | xargs))" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1

corpus="$fuzz_dir/corpus/$target"
mkdir -p "$corpus" "$fuzz_dir/target/logs"
if [[ -d "$fuzz_dir/seeds/$target" ]]; then
    cp -n "$fuzz_dir/seeds/$target"/* "$corpus"/ 2>/dev/null || true
fi

# -a: debug assertions and overflow checks on, so an arithmetic overflow is a crash too.
nice -n 10 cargo fuzz build -a --sanitizer "$sanitizer" "$target"

log="$fuzz_dir/target/logs/$target.log"
set +e
# shellcheck disable=SC2086 # FUZZ_ARGS is meant to split into flags
nice -n 10 cargo fuzz run -a --sanitizer "$sanitizer" "$target" "$corpus" -- \
    -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_ARGS:-} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo
echo "=== $target: final libFuzzer stats (full log: $log) ==="
grep -E '^#[0-9]+' "$log" | tail -n 1 || true
grep -E '^(Done [0-9]+ runs|stat::)' "$log" || true
if [[ $status -ne 0 ]]; then
    echo "=== $target: FAILED (exit $status); crash inputs in fuzz/artifacts/$target/ ==="
    ls -l "$fuzz_dir/artifacts/$target/" 2>/dev/null || true
fi
exit "$status"
