#!/usr/bin/env bash
# One rate-limited seeder and N fetchers started together on [::1]; fetcher k
# is given only fetcher k-1's address (the first, the seeder's). Prints each
# fetcher's time, the seeder's upload ratio, and checks every copy.
#   scripts/swarm-chain.sh [SIZE_MIB=64] [FETCHERS=5] [RATE=16MiB]
set -euo pipefail
size_mib=${1:-64}; n=${2:-5}; rate=${3:-16MiB}
root_dir=$(cd "$(dirname "$0")/.." && pwd)
pex=${PEX:-$root_dir/target/release/pex}
[ -x "$pex" ] || (cd "$root_dir" && cargo build --release --quiet)
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
head -c $((size_mib << 20)) /dev/urandom > "$work/file.bin"
base=$((20000 + RANDOM % 20000))
"$pex" seed "$work/file.bin" --listen "[::1]:$base" --data-dir "$work/seed" --max-upload-rate "$rate" --json \
  > "$work/seed.json" 2> "$work/seed.err" & pids+=($!)
for _ in $(seq 1 300); do grep -q "pex fetch" "$work/seed.err" 2>/dev/null && break; sleep 0.05; done
root=$(head -1 "$work/seed.err")
start=$(date +%s.%N)
prev="[::1]:$base"
for k in $(seq 1 "$n"); do
  port=$((base + k))
  ( "$pex" fetch "$root" --peer "$prev" --listen "[::1]:$port" -o "$work/out$k" --data-dir "$work/f$k" --json --seed \
      > "$work/f$k.json" 2> "$work/f$k.err" & echo $! > "$work/f$k.pid"; wait ) &
  prev="[::1]:$port"
done
for k in $(seq 1 "$n"); do
  for _ in $(seq 1 1200); do [ -f "$work/out$k" ] && break; sleep 0.05; done
  t=$(date +%s.%N); printf 'fetcher %d done after %.2f s\n' "$k" "$(echo "$t - $start" | bc)"
  cmp -s "$work/file.bin" "$work/out$k" || { echo "fetcher $k: copy differs"; exit 1; }
done
end=$(date +%s.%N)
for k in $(seq 1 "$n"); do kill -INT "$(cat "$work/f$k.pid")"; done
sleep 0.5
kill -INT "${pids[0]}"; wait "${pids[0]}" || true
up=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["uploaded_bytes"])' "$work/seed.json")
printf 'all %d fetchers byte-exact in %.2f s; seeder uploaded %d bytes = %.2f x the file\n' \
  "$n" "$(echo "$end - $start" | bc)" "$up" "$(echo "$up / ($size_mib * 1048576)" | bc -l)"
