#!/usr/bin/env bash
# Times `pex fetch ROOT -o -` (streaming to a reader that hashes with SHA-256)
# against `pex fetch ROOT -o FILE`, interleaved, on one file over [::1]. For the
# stream: whether the bytes' SHA-256 matches the file, the first byte's time
# after the process starts, the whole time and the fetcher's peak RSS
# (/usr/bin/time %M). Loopback only; local-network discovery off.
#   scripts/stream-bench.sh      env: SIZE_MIB=1024 RUNS=3 PEX=target/release/pex
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
PEX=$(realpath "${PEX:-target/release/pex}")
[ -x "$PEX" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
export PEX_NO_LAN=1
work=$(mktemp -d /tmp/stream-bench.XXXXXX)
seeder=
cleanup() { [ -n "$seeder" ] && kill "$seeder" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/f.bin"
want=$(sha256sum "$work/f.bin" | cut -d' ' -f1)
"$PEX" seed "$work/f.bin" --listen '[::1]:0' --data-dir "$work/s" -q >"$work/seed.out" 2>/dev/null &
seeder=$!
for _ in $(seq 600); do [ "$(wc -l <"$work/seed.out")" -ge 2 ] && break; sleep 0.1; done
root=$(head -1 "$work/seed.out")
peer=$(sed -n 2p "$work/seed.out" | sed 's/.*--peer //')
for i in $(seq "$RUNS"); do
  python3 - "$want" /usr/bin/time -f %M "$PEX" fetch "$root" --peer "$peer" -o - -q --data-dir "$work/d$i" <<'EOF'
import hashlib, subprocess, sys, time
want, args = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
first, h, n = None, hashlib.sha256(), 0
while True:
    b = p.stdout.read1(1 << 20)
    if not b:
        break
    first = first or time.monotonic()
    h.update(b)
    n += len(b)
p.wait()
rss = int(p.stderr.read().decode().split()[-1])
ok = "matches" if h.hexdigest() == want else "DIFFERS"
print(f"stream: {n} bytes, sha256 {ok}, first byte {(first - t0) * 1000:.1f} ms, "
      f"{time.monotonic() - t0:.2f} s, peak RSS {rss / 1024:.1f} MiB")
EOF
  rm -f "$work/out.bin"
  /usr/bin/time -f "file:   %e s, peak RSS %M KiB" "$PEX" fetch "$root" --peer "$peer" -o "$work/out.bin" -q \
    --data-dir "$work/e$i" >/dev/null
done
