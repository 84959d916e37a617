#!/usr/bin/env bash
# Times moving a folder with `pex seed DIR` / `pex fetch`, with tar piped through
# socat, and with iroh's sendme, interleaved per round, on two generated folders:
# "small" (FILES files of 1–16 KiB random data over DIRS subdirectories) and
# "large" (four files of SIZE_MIB MiB random data). For each folder and tool: the
# seed time (launch until the sender is ready to serve: pex prints its --peer
# line, sendme its ticket; tar has none), the fetch time (the receiver's wall
# time from start to the complete folder on disk), and a `diff -r` of the
# received tree against the original (FAIL if they differ). Prints medians over
# RUNS rounds, fetch ÷ tar, and whether pex fetched the small folder in under 5 s.
# Loopback only: pex and tar over [::1] (local-network discovery off); sendme
# with both ends in one `unshare -n` network namespace holding only lo, relays
# off and a ticket of direct addresses only. Fresh data dirs every round.
#   scripts/folder-bench.sh   env: RUNS=3 FILES=10000 DIRS=100 SIZE_MIB=256
#     PEX=target/release/pex SENDME=sendme TOOLS="pex tar sendme" FOLDERS="small large"
#     TMPDIR=/tmp (where the folders go; /dev/shm takes the disk's noise out: on
#     this VM's ext4, writing 10,000 small files alone varied from 0.4 to 7 s)
set -euo pipefail
RUNS=${RUNS:-3}
FILES=${FILES:-10000}
DIRS=${DIRS:-100}
SIZE_MIB=${SIZE_MIB:-256}
TOOLS=${TOOLS:-pex tar sendme}
FOLDERS=${FOLDERS:-small large}
SENDME=${SENDME:-sendme}
WAIT_SECS=600 # longest wait for a seeder to become ready, or for one fetch
export PEX_NO_LAN=1

has() { [[ " $1 " == *" $2 "* ]]; }
die() { echo "folder-bench: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "needs python3 (to generate the folders)"
command -v diff >/dev/null || die "needs diff (apt-get install diffutils)"
command -v timeout >/dev/null || die "needs timeout (coreutils)"
if has "$TOOLS" pex; then
  PEX=$(realpath "${PEX:-$(dirname "$0")/../target/release/pex}")
  [ -x "$PEX" ] || die "no pex at $PEX: build first (cargo build --release) or set PEX"
fi
if has "$TOOLS" tar; then
  command -v tar >/dev/null || die "needs tar"
  command -v socat >/dev/null || die "needs socat (apt-get install socat)"
fi
if has "$TOOLS" sendme; then
  if ! SENDME=$(command -v "$SENDME"); then
    echo "sendme: not installed, skipped (cargo install sendme --locked)"
    TOOLS=${TOOLS//sendme/}
  elif ! command -v ip >/dev/null; then
    die "needs ip (apt-get install iproute2) to bring up lo in sendme's namespace"
  elif unshare -n true 2>/dev/null; then
    UNSHARE=(unshare -n)
  elif unshare -r -n true 2>/dev/null; then
    UNSHARE=(unshare -r -n)
  else
    die "sendme needs its own network namespace and 'unshare -n' is not allowed here; run as root or TOOLS=\"pex tar\""
  fi
fi
[ -n "${TOOLS// /}" ] || die "no tool left to run"

work=$(mktemp -d "${TMPDIR:-/tmp}/folder-bench.XXXXXX")
: >"$work/pids" # every background process, for cleanup
cleanup() {
  local pid
  while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/pids"
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bg() { echo "$1" >>"$work/pids"; }

# --- the folders ---
src=$work/src
mkdir -p "$src/large" "$work/res" "$work/run"
if has "$FOLDERS" small; then
  python3 - "$src/small" "$FILES" "$DIRS" <<'EOF'
import os, random, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
for i in range(files):
    with open(f"{root}/d{i % dirs:03}/f{i:05}.bin", "wb") as f:
        f.write(os.urandom(random.randint(1, 16) << 10))
EOF
fi
if has "$FOLDERS" large; then
  for i in 1 2 3 4; do head -c $((SIZE_MIB << 20)) /dev/urandom >"$src/large/f$i.bin"; done
fi
for f in $FOLDERS; do
  [ -d "$src/$f" ] || die "unknown folder '$f' in FOLDERS (small, large)"
  echo "folder $f: $(find "$src/$f" -type f | wc -l) files, $(du -sh --apparent-size "$src/$f" | cut -f1)"
done

now() { local t=$EPOCHREALTIME; echo "${t/./}"; } # µs
secs() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1e6 }'; }

# Waits until FILE has a line matching REGEX while PID lives; 10 ms polls.
wait_for_line() {
  local file=$1 regex=$2 pid=$3 deadline=$(($(now) + WAIT_SECS * 1000000))
  until grep -qE -e "$regex" "$file"; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(now)" -lt "$deadline" ] || return 1
    sleep 0.01
  done
}

# Records one round's result: FOLDER TOOL SEED_US FETCH_US OK(0/1) and prints it.
record() {
  local f=$1 t=$2 seed=$3 fetch=$4 ok=$5 show_seed=-
  [ "$seed" = - ] || show_seed="$(secs "$seed") s"
  if [ "$ok" = 1 ]; then
    echo "$seed" >>"$work/res/$f.$t.seed"
    echo "$fetch" >>"$work/res/$f.$t.fetch"
    echo "  $f $t: seed $show_seed, fetch $(secs "$fetch") s, tree matches"
  else
    echo "x" >>"$work/res/$f.$t.fail"
    echo "  FAIL: $f $t: $6"
  fi
}

# 0 if the received tree GOT equals the folder F; else says why on stdout.
same_tree() {
  local f=$1 got=$2
  [ -d "$got" ] || { echo "nothing received at $got"; return 1; }
  diff -r -q "$src/$f" "$got" >"$work/diff.out" 2>&1 && return 0
  echo "received tree differs from the original ($(wc -l <"$work/diff.out") differences, e.g. $(head -1 "$work/diff.out"))"
  return 1
}

# Where a fetch into OUT put folder F: OUT/F if that is all OUT holds, else OUT.
landed() {
  local f=$1 out=$2
  if [ -d "$out/$f" ] && [ "$(ls -A "$out")" = "$f" ]; then echo "$out/$f"; else echo "$out"; fi
}

run_pex() {
  local f=$1 d=$2 t0 t1 t2 seeder root peer why
  mkdir -p "$d/out"
  : >"$d/seed.out"
  t0=$(now)
  "$PEX" seed "$src/$f" --listen '[::1]:0' --data-dir "$d/seed-data" -q >"$d/seed.out" 2>"$d/seed.err" &
  seeder=$!
  bg "$seeder"
  if ! wait_for_line "$d/seed.out" '--peer [^ ]+$' "$seeder"; then
    kill "$seeder" 2>/dev/null || true
    wait "$seeder" 2>/dev/null || true
    record "$f" pex - - 0 "seed never printed its --peer line: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
    return
  fi
  t1=$(now)
  root=$(sed -n 1p "$d/seed.out")
  peer=$(grep -m1 -oE -e '--peer [^ ]+$' "$d/seed.out" | cut -d' ' -f2)
  if ! [[ $root =~ ^[0-9a-f]{64}$ ]]; then
    kill "$seeder" 2>/dev/null || true
    wait "$seeder" 2>/dev/null || true
    record "$f" pex - - 0 "seed's first line is not a root hash: $root"
    return
  fi
  t2=$(now)
  if timeout "$WAIT_SECS" "$PEX" fetch "$root" --peer "$peer" -o "$d/out" -q --data-dir "$d/fetch-data" \
    >"$d/fetch.out" 2>"$d/fetch.err"; then
    local t3
    t3=$(now)
    kill "$seeder" 2>/dev/null || true
    wait "$seeder" 2>/dev/null || true
    if why=$(same_tree "$f" "$(landed "$f" "$d/out")"); then
      record "$f" pex $((t1 - t0)) $((t3 - t2)) 1
    else
      record "$f" pex - - 0 "$why"
    fi
  else
    kill "$seeder" 2>/dev/null || true
    wait "$seeder" 2>/dev/null || true
    record "$f" pex - - 0 "fetch failed: $(tail -c 300 "$d/fetch.err" | tr '\n' ' ')"
  fi
}

run_tar() {
  local f=$1 d=$2 port t0 t1 rsock rtar ok=1 why=
  port=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); print(s.getsockname()[1])')
  mkdir -p "$d/out"
  mkfifo "$d/pipe" # socat's stdout into tar, as `socat … - | tar x` but with both pids known
  t0=$(now)
  socat -u "TCP6-LISTEN:$port,bind=[::1],reuseaddr" - >"$d/pipe" 2>"$d/recv.err" &
  rsock=$!
  bg "$rsock"
  tar x -C "$d/out" <"$d/pipe" 2>>"$d/recv.err" &
  rtar=$!
  bg "$rtar"
  # retry: the listener may not be up yet (5 s at most)
  if ! tar c -C "$src" "$f" 2>"$d/send.err" | socat -u - "TCP6:[::1]:$port,retry=500,interval=0.01" 2>>"$d/send.err"; then
    ok=0 why="sender failed: $(tail -c 300 "$d/send.err" | tr '\n' ' ')"
    kill "$rsock" "$rtar" 2>/dev/null || true
  fi
  wait "$rsock" || { [ $ok = 0 ] || ok=0 why="receiving socat failed: $(tail -c 300 "$d/recv.err")"; }
  wait "$rtar" || { [ $ok = 0 ] || ok=0 why="tar x failed: $(tail -c 300 "$d/recv.err")"; }
  t1=$(now)
  if [ $ok = 1 ] && ! why=$(same_tree "$f" "$d/out/$f"); then ok=0; fi
  if [ $ok = 1 ]; then record "$f" tar - $((t1 - t0)) 1; else record "$f" tar - - 0 "$why"; fi
}

# Runs inside the new network namespace: sender and receiver, both timed.
# Writes "SEED_US FETCH_US STATUS" to D/result (STATUS: 0 ok, else why in D/why).
sendme_inner() {
  set -uo pipefail
  local sendme=$1 src=$2 d=$3 wait_secs=$4 pids=$5 t0 t1 t2 t3 sender ticket rc deadline
  # no relays; sockets on loopback only (the namespace has nothing else anyway)
  local flags=(--relay disabled --magic-ipv4-addr 127.0.0.1:0 --magic-ipv6-addr '[::1]:0' --no-progress)
  now() { local t=$EPOCHREALTIME; echo "${t/./}"; }
  ip link set lo up || { echo "ip link set lo up failed" >"$d/why"; echo "- - 1" >"$d/result"; return; }
  mkdir -p "$d/send" "$d/out"
  cd "$d/send" # sendme keeps its store in .sendme-send-* in the working directory
  : >"$d/send.out"
  t0=$(now)
  "$sendme" send "${flags[@]}" --ticket-type addresses "$src" \
    >"$d/send.out" 2>"$d/send.err" </dev/null &
  sender=$!
  echo "$sender" >>"$pids"
  trap "kill $sender 2>/dev/null; wait $sender 2>/dev/null" EXIT # $sender is local: expand it now
  deadline=$(($(now) + wait_secs * 1000000))
  until grep -qE '^sendme receive [^ ]+$' "$d/send.out"; do
    if ! kill -0 "$sender" 2>/dev/null || [ "$(now)" -ge "$deadline" ]; then
      echo "send printed no ticket: $(tail -c 300 "$d/send.err" | tr '\n' ' ')" >"$d/why"
      echo "- - 1" >"$d/result"
      return
    fi
    sleep 0.01
  done
  t1=$(now)
  ticket=$(grep -m1 -E '^sendme receive ' "$d/send.out" | cut -d' ' -f3)
  cd "$d/out" # receive writes the folder into the working directory
  t2=$(now)
  timeout "$wait_secs" "$sendme" receive "${flags[@]}" "$ticket" \
    >"$d/recv.out" 2>"$d/recv.err" </dev/null
  rc=$?
  t3=$(now)
  [ $rc = 0 ] || echo "receive failed ($rc): $(tail -c 300 "$d/recv.err" | tr '\n' ' ')" >"$d/why"
  echo "$((t1 - t0)) $((t3 - t2)) $rc" >"$d/result"
}

run_sendme() {
  local f=$1 d=$2 seed fetch rc why
  mkdir -p "$d"
  "${UNSHARE[@]}" bash -c "$(declare -f sendme_inner); sendme_inner \"\$@\"" _ \
    "$SENDME" "$src/$f" "$d" "$WAIT_SECS" "$work/pids" || true
  read -r seed fetch rc <"$d/result" || { seed=- fetch=- rc=1; echo "no result from the namespace" >"$d/why"; }
  if [ "$rc" = 0 ] && why=$(same_tree "$f" "$d/out/$f"); then
    record "$f" sendme "$seed" "$fetch" 1
  else
    [ "$rc" = 0 ] || why=$(cat "$d/why" 2>/dev/null || echo "failed")
    record "$f" sendme - - 0 "$why"
  fi
}

for r in $(seq "$RUNS"); do
  echo "round $r/$RUNS"
  for f in $FOLDERS; do
    for t in $TOOLS; do
      d=$work/run/$r-$f-$t
      mkdir -p "$d"
      sync # start on a clean page cache: no writeback of the last round's gigabyte during this one
      "run_$t" "$f" "$d"
      rm -rf "$d" # nothing carries over to the next round, and the disk stays small
      : >"$work/pids" # all of them reaped by now: don't kill a recycled pid at exit
    done
  done
done

median() { # of the numbers in FILE (µs), in seconds; "-" if none
  [ -s "$1" ] && grep -qv '^-$' "$1" || { echo -; return; }
  grep -v '^-$' "$1" | sort -n | awk '{ a[NR] = $1 } END {
    m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f", m / 1e6 }'
}

echo
printf '%-7s %-7s %10s %10s %11s  %s\n' folder tool "seed (s)" "fetch (s)" "fetch÷tar" check # ÷ is 2 bytes
failed=0
for f in $FOLDERS; do
  tar_fetch=-
  has "$TOOLS" tar && tar_fetch=$(median "$work/res/$f.tar.fetch" 2>/dev/null || echo -)
  for t in $TOOLS; do
    seed=$(median "$work/res/$f.$t.seed" 2>/dev/null || echo -)
    fetch=$(median "$work/res/$f.$t.fetch" 2>/dev/null || echo -)
    ratio=-
    [ "$fetch" != - ] && [ "$tar_fetch" != - ] && ratio=$(awk -v a="$fetch" -v b="$tar_fetch" 'BEGIN { printf "%.2f", a / b }')
    check=ok
    if [ -e "$work/res/$f.$t.fail" ]; then
      check="FAIL ($(wc -l <"$work/res/$f.$t.fail") of $RUNS rounds)"
      failed=1
    fi
    printf '%-7s %-7s %10s %10s %10s  %s\n' "$f" "$t" "$seed" "$fetch" "$ratio" "$check"
  done
done
if has "$TOOLS" pex && has "$FOLDERS" small; then
  fetch=$(median "$work/res/small.pex.fetch" 2>/dev/null || echo -)
  if [ "$fetch" = - ]; then
    echo "pex: the $FILES-file folder never fetched: FAIL"
  elif awk -v s="$fetch" 'BEGIN { exit !(s < 5) }'; then
    echo "pex: the $FILES-file folder fetched in $fetch s (median): under 5 s, yes"
  else
    echo "pex: the $FILES-file folder fetched in $fetch s (median): under 5 s, NO"
  fi
fi
exit $failed
