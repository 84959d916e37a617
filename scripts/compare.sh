#!/usr/bin/env bash
# Compares pex with rqbit (BitTorrent) and iroh's sendme on one file, in one
# sitting: generates a random file of SIZE bytes, warms it into the page cache,
# then runs RUNS rounds, each running every tool once in turn (pex, rqbit,
# sendme, pex, rqbit, …). Every run starts a fresh seeder and a fresh receiver
# (new data dirs), waits for the seeder to be ready by polling (its one-time
# hashing is not timed), then times the receiver from its start to its exit and
# compares the received copy with the original (cmp; a difference is a FAIL).
# Per run: wall seconds, MB/s (10^6 bytes/s), CPU seconds (user+sys) of the
# receiver (/usr/bin/time) and of the seeder during the transfer (utime+stime
# from /proc/PID/stat just before the receiver starts and just after it exits),
# and the receiver's peak RSS. Prints each run, then a table of medians and
# pex's throughput over each other tool's.
# Loopback only: every run happens in its own network namespace (unshare -n)
# holding only lo, with seeder and receiver both inside it; pex on [::1] with
# local-network discovery off; rqbit with DHT, UPnP, local service discovery
# and trackers off, the receiver given the seeder's address as its only peer;
# sendme with relays off and a ticket of direct addresses. A tool that is not
# installed is skipped; the others still run. Exits 1 if any run failed.
#   scripts/compare.sh
#   env: SIZE=1GiB (bytes, or with K/M/G/T[iB], all powers of 1024) RUNS=3
#        TOOLS="pex rqbit sendme" PEX=target/release/pex RQBIT=rqbit SENDME=sendme
#        WAIT_SECS=600 (longest wait for a seeder to be ready, or for one transfer)
#        TMPDIR=/tmp (where the file and the received copies go; /dev/shm takes
#        the disk out: pex fsyncs what it fetched, the others may not)
# shellcheck disable=SC2317 # functions run from a trap, or in the namespace's shell (declare -f)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-1GiB}
RUNS=${RUNS:-3}
TOOLS=${TOOLS:-pex rqbit sendme}
WAIT_SECS=${WAIT_SECS:-600}
export PEX_NO_LAN=1

die() { echo "compare: $*" >&2; exit 1; }
has() { [[ " $1 " == *" $2 "* ]]; }

# SIZE in bytes: 1073741824, 1G, 1GiB, 64M, 64MiB, 512K, …
bytes() {
  [[ $1 =~ ^([0-9]+)([KMGT]?)(iB|B)?$ ]] || return 1
  local n=${BASH_REMATCH[1]} shift=0
  case ${BASH_REMATCH[2]} in K) shift=10 ;; M) shift=20 ;; G) shift=30 ;; T) shift=40 ;; esac
  echo $((n << shift))
}
size=$(bytes "$SIZE") || die "SIZE=$SIZE: expected bytes, or a number with K, M, G or T (KiB, MiB, …)"
[ "$size" -gt 0 ] || die "SIZE must be more than 0"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS: expected a positive number"
for t in $TOOLS; do
  case $t in pex | rqbit | sendme) ;; *) die "unknown tool '$t' in TOOLS (pex, rqbit, sendme)" ;; esac
done

[ -x /usr/bin/time ] || die "needs GNU time at /usr/bin/time (apt-get install time)"
command -v python3 >/dev/null || die "needs python3 (for the medians)"
command -v cmp >/dev/null || die "needs cmp (apt-get install diffutils)"
command -v timeout >/dev/null || die "needs timeout (coreutils)"
command -v setsid >/dev/null || die "needs setsid (util-linux)"
command -v ip >/dev/null || die "needs ip (apt-get install iproute2) to bring up lo in each namespace"
if unshare -n true 2>/dev/null; then
  UNSHARE=(unshare -n)
elif unshare -r -n true 2>/dev/null; then
  UNSHARE=(unshare -r -n)
else
  die "every run needs its own network namespace and 'unshare -n' is not allowed here (run as root)"
fi
clk_tck=$(getconf CLK_TCK)

# The path of tool NAME (from VAR, else PATH, else ~/.cargo/bin), or nothing.
find_tool() {
  local want=$1 name=$2
  if command -v "$want" >/dev/null 2>&1; then
    realpath "$(command -v "$want")"
  elif [ "$want" = "$name" ] && [ -x "$HOME/.cargo/bin/$name" ]; then
    echo "$HOME/.cargo/bin/$name"
  fi
}
declare -A BIN VERSION
skip=()
for t in $TOOLS; do
  case $t in
    pex)
      p=${PEX:-$root/target/release/pex}
      [ -x "$p" ] || die "no pex at $p: build first (cargo build --release) or set PEX"
      BIN[pex]=$(realpath "$p")
      ;;
    rqbit)
      BIN[rqbit]=$(find_tool "${RQBIT:-rqbit}" rqbit)
      if [ -n "${BIN[rqbit]}" ] && ! command -v curl >/dev/null; then
        echo "rqbit: needs curl (apt-get install curl) to see when its seeder is ready; skipped"
        skip+=(rqbit)
        continue
      fi
      ;;
    sendme) BIN[sendme]=$(find_tool "${SENDME:-sendme}" sendme) ;;
  esac
  if [ -z "${BIN[$t]}" ]; then
    echo "$t: not installed (cargo install $t --locked); skipped"
    skip+=("$t")
    continue
  fi
  VERSION[$t]=$("${BIN[$t]}" --version 2>/dev/null | head -1) || VERSION[$t]=
  VERSION[$t]=${VERSION[$t]#"$t "}
  VERSION[$t]=${VERSION[$t]:-?}
done
kept=
for t in $TOOLS; do has "${skip[*]:-}" "$t" || kept+="${kept:+ }$t"; done
TOOLS=$kept
[ -n "$TOOLS" ] || die "no tool left to run"

work=$(mktemp -d "${TMPDIR:-/tmp}/compare.XXXXXX")
groups=() # process groups (one per run, each the whole namespace) to kill on exit
cleanup() {
  local g
  trap - EXIT INT TERM
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${groups[@]}"; do # wait for them to go (their namespace goes with them), then force
    for _ in $(seq 50); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "compare: interrupted" >&2; exit 130' INT TERM

# --- the file ---
src=$work/file.bin
mkdir -p "$work/res" "$work/run"
echo "generating $size bytes of random data in $src"
head -c "$size" /dev/urandom >"$src"
[ "$(stat -c %s "$src")" = "$size" ] || die "could not write $size bytes to $src (disk full?)"
sync
cat "$src" >/dev/null # into the page cache: every tool reads it from memory
echo "tools: $TOOLS; $RUNS round(s); all loopback, each run in its own network namespace"
read -r load _ </proc/loadavg
cpus=$(nproc)
if awk -v l="$load" -v n="$cpus" 'BEGIN { exit !(l > n / 2) }'; then
  echo "note: load average $load on $cpus CPUs: something else is running, the timings will be noisy"
fi

# ---------------------------------------------------------------------------
# Run inside the namespace (bash -c with these functions declared). Each
# ns_TOOL starts its seeder, waits until it is ready, then calls `measure` with
# the receiver's command line; `measure` writes D/result:
#   WALL_US RECV_USER_S RECV_SYS_S RECV_MAXRSS_KIB SEED_CPU_TICKS SETUP_US
# (SETUP_US: from the seeder's launch until it was ready, not part of WALL_US)
# or D/why on failure. The received copy must end up at D/out/file.bin.

now() { local t=$EPOCHREALTIME; echo "${t/./}"; } # µs

# utime+stime of PID in ticks (fields 14 and 15 of /proc/PID/stat; the name
# in field 2 may hold spaces, so count from its closing parenthesis).
ticks() {
  local s
  s=$(cat "/proc/$1/stat") || return 1
  s=${s##*) }
  local -a f
  read -r -a f <<<"$s"
  echo $((f[11] + f[12]))
}

fail() { echo "$*" >"$d/why"; exit 1; }

# Waits until FILE has a line matching REGEX while PID lives; 10 ms polls.
wait_for_line() {
  local file=$1 regex=$2 pid=$3 deadline=$(($(now) + wait_secs * 1000000))
  until grep -qE -e "$regex" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(now)" -lt "$deadline" ] || return 1
    sleep 0.01
  done
}

# Started as `BIN … &`, $! is the tool itself (bash execs a simple command in
# the forked child); make sure, since its CPU time is read from /proc/$!. The
# child may not have exec'd yet: wait for that, 5 s at most.
check_pid() {
  local pid=$1 bin=$2 exe
  for _ in $(seq 500); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || fail "$bin exited at once: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
    [ "$exe" = "$bin" ] && return
    sleep 0.01
  done
  fail "pid $pid is not $bin but $exe"
}

# measure SEEDER_PID RECEIVER_CMD…: runs the receiver to its exit, timed.
measure() {
  local seeder=$1 t0 t1 c0 c1 rc setup
  shift
  setup=$(($(now) - seed_t0))
  sync # none of the seeder's setup writes (sendme's store) flushed during the transfer
  c0=$(ticks "$seeder") || fail "seeder exited before the transfer: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
  t0=$(now)
  # time → timeout → receiver: time's %U %S %M cover the receiver (timeout's own
  # share is nil); --foreground keeps timeout in this process group
  /usr/bin/time -f '%U %S %M' -o "$d/time.out" \
    timeout --foreground "$wait_secs" "$@" >"$d/recv.out" 2>"$d/recv.err" </dev/null
  rc=$?
  t1=$(now)
  c1=$(ticks "$seeder") || fail "seeder exited during the transfer: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
  [ "$rc" = 124 ] && fail "receiver did not finish within $wait_secs s"
  [ "$rc" = 0 ] || fail "receiver failed (exit $rc): $(tail -c 400 "$d/recv.err" | tr '\n' ' ')"
  echo "$((t1 - t0)) $(tail -1 "$d/time.out") $((c1 - c0)) $setup" >"$d/result"
}

ns_pex() {
  local root peer
  "$bin" seed "$src" --listen '[::1]:0' --data-dir "$d/seed-data" -q --no-remember \
    >"$d/seed.out" 2>"$d/seed.err" </dev/null &
  seeder=$!
  check_pid "$seeder" "$bin"
  wait_for_line "$d/seed.out" '--peer [^ ]+$' "$seeder" ||
    fail "pex seed printed no --peer line: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
  root=$(sed -n 1p "$d/seed.out")
  peer=$(grep -m1 -oE -e '--peer [^ ]+$' "$d/seed.out" | cut -d' ' -f2)
  [[ $root =~ ^[0-9a-f]{64}$ ]] || fail "pex seed's first line is not a root hash: $root"
  measure "$seeder" "$bin" fetch "$root" --peer "$peer" -o "$d/out/file.bin" \
    --listen '[::1]:0' --data-dir "$d/fetch-data" --no-remember --no-pex -q --json
}

ns_sendme() {
  local ticket
  # no relays; sockets on loopback only (the namespace has nothing else anyway)
  local flags=(--relay disabled --magic-ipv4-addr 127.0.0.1:0 --magic-ipv6-addr '[::1]:0' --no-progress)
  mkdir -p "$d/send"
  cd "$d/send" # sendme keeps its store in .sendme-send-* in the working directory
  "$bin" send "${flags[@]}" --ticket-type addresses "$src" \
    >"$d/seed.out" 2>"$d/seed.err" </dev/null &
  seeder=$!
  check_pid "$seeder" "$bin"
  wait_for_line "$d/seed.out" '^sendme receive [^ ]+$' "$seeder" ||
    fail "sendme send printed no ticket: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
  ticket=$(grep -m1 -E '^sendme receive ' "$d/seed.out" | cut -d' ' -f3)
  cd "$d/out" # receive writes the file into the working directory
  measure "$seeder" "$bin" receive "${flags[@]}" "$ticket"
}

ns_rqbit() {
  local magnet deadline api='http://[::1]:3030'
  # nothing but the peer it is given: no DHT, trackers, UPnP or local discovery;
  # fixed ports are free in a fresh namespace. HOME per process: no state shared
  # across runs or between the two (rqbit download/share keep none anyway).
  local flags=(--disable-dht --disable-dht-persistence --disable-trackers --disable-lsd
    --disable-upnp-port-forward --listen-ip ::1)
  mkdir -p "$d/seed-home" "$d/recv-home"
  HOME=$d/seed-home "$bin" "${flags[@]}" --listen-port 4240 --http-api-listen-addr '[::1]:3030' \
    share "$src" >"$d/seed.out" 2>"$d/seed.err" </dev/null &
  seeder=$!
  check_pid "$seeder" "$bin"
  # share hashes the file to make the torrent, then checks it again before it
  # serves: ready once its HTTP API says the torrent is live and complete
  wait_for_line "$d/seed.out" 'magnet:\?xt=' "$seeder" ||
    fail "rqbit share printed no magnet link: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
  magnet=$(grep -m1 -oE 'magnet:\?xt=[^[:space:]]+' "$d/seed.out" | sed 's/\x1b\[[0-9;]*m//g')
  deadline=$(($(now) + wait_secs * 1000000))
  until curl -sf --max-time 5 "$api/torrents/0/stats/v1" 2>/dev/null | tr -d ' ' | grep -q '"state":"live".*"finished":true'; do
    kill -0 "$seeder" 2>/dev/null || fail "rqbit share exited: $(tail -c 300 "$d/seed.err" | tr '\n' ' ')"
    [ "$(now)" -lt "$deadline" ] || fail "rqbit share not live and complete within $wait_secs s"
    sleep 0.01
  done
  # -e: exit once the download is complete (every piece SHA-1-checked)
  HOME=$d/recv-home measure "$seeder" "$bin" "${flags[@]}" --listen-port 4241 \
    download -e --disable-http-api --initial-peers '[::1]:4240' -o "$d/out" "$magnet"
}

# In the namespace: bring up lo, run ns_TOOL, kill the seeder on the way out.
ns_main() {
  set -uo pipefail
  tool=$1 bin=$2 src=$3 d=$4 wait_secs=$5
  seeder=
  trap '[ -z "$seeder" ] || kill "$seeder" 2>/dev/null; wait' EXIT
  ip link set lo up || fail "ip link set lo up failed"
  mkdir -p "$d/out"
  seed_t0=$(now)
  "ns_$tool"
}
# ---------------------------------------------------------------------------

secs() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1e6 }'; }

# run TOOL ROUND: one run in a fresh namespace; appends to res/TOOL, or res/TOOL.fail.
run() {
  local t=$1 r=$2 d=$work/run/$1-$2 pg wall ru rs rss st setup why
  mkdir -p "$d"
  # its own session and process group (setsid does not fork: $! is not a group
  # leader), so that cleanup can kill everything the namespace runs at once
  setsid "${UNSHARE[@]}" bash -c "$(declare -f now ticks fail wait_for_line check_pid measure ns_pex ns_sendme ns_rqbit ns_main); ns_main \"\$@\"" _ \
    "$t" "${BIN[$t]}" "$src" "$d" "$WAIT_SECS" </dev/null &
  pg=$!
  groups+=("$pg")
  wait "$pg" || true
  if [ -s "$d/result" ] && read -r wall ru rs rss st setup <"$d/result"; then
    if cmp -s "$src" "$d/out/file.bin"; then
      echo "$wall $ru $rs $rss $st" >>"$work/res/$t"
      printf '  %-7s %8.3f s %9.1f MB/s   CPU recv %6.2f s + seed %6.2f s   recv RSS %7.1f MiB   (seed setup %.2f s)   copy matches\n' \
        "$t" "$(secs "$wall")" "$(awk -v b="$size" -v u="$wall" 'BEGIN { print b / u }')" \
        "$(awk -v a="$ru" -v b="$rs" 'BEGIN { print a + b }')" \
        "$(awk -v s="$st" -v h="$clk_tck" 'BEGIN { print s / h }')" \
        "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$(secs "$setup")"
    else
      why="received copy differs from the original: $(cmp "$src" "$d/out/file.bin" 2>&1 | head -1)"
    fi
  else
    why=$(cat "$d/why" 2>/dev/null || echo "the namespace gave no result")
  fi
  if [ -n "${why:-}" ]; then
    echo "$why" >>"$work/res/$t.fail"
    echo "  FAIL $t: $why"
  fi
  # every process of the run has exited with the namespace's shell; be sure
  kill -KILL -- "-$pg" 2>/dev/null || true
  groups=() # runs are one at a time: none left
  rm -rf "$d" # nothing carries over to the next run, and the disk stays small
}

for r in $(seq "$RUNS"); do
  echo "round $r/$RUNS"
  for t in $TOOLS; do
    sync # no writeback of the previous run's copy during this one
    run "$t" "$r"
  done
done

echo
for t in $TOOLS; do echo "${VERSION[$t]}" >"$work/res/$t.version"; done
failed=0
# shellcheck disable=SC2086 # one argument per tool
python3 - "$work/res" "$size" "$clk_tck" "$RUNS" $TOOLS <<'EOF' || failed=1
import os, statistics, sys
res, size, hz, runs, tools = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
gib = size / 2**30
def read(name):
    p = os.path.join(res, name)
    return open(p).read().splitlines() if os.path.exists(p) else []
rows, mbps, bad = [], {}, False
for t in tools:
    runs_ok = [l.split() for l in read(t)]
    fails = len(read(t + ".fail"))
    bad = bad or fails > 0 or not runs_ok
    version = (read(t + ".version") or ["?"])[0]
    if not runs_ok:
        rows.append((t, version, "-", "-", "-", "-", "-", "-", f"FAIL ({fails} of {runs})"))
        continue
    wall = [int(r[0]) / 1e6 for r in runs_ok]
    rate = [size / w / 1e6 for w in wall]
    cpu_r = [(float(r[1]) + float(r[2])) / gib for r in runs_ok]
    cpu_s = [int(r[4]) / hz / gib for r in runs_ok]
    cpu_t = [a + b for a, b in zip(cpu_r, cpu_s)]
    rss = [int(r[3]) / 1024 for r in runs_ok]
    med = statistics.median
    mbps[t] = med(rate)
    check = "ok" if not fails else f"FAIL ({fails} of {runs})"
    rows.append((t, version, f"{med(wall):.3f}", f"{med(rate):.1f}", f"{med(cpu_r):.2f}",
                 f"{med(cpu_s):.2f}", f"{med(cpu_t):.2f}", f"{med(rss):.1f}", check))
head = ("tool", "version", "median s", "MB/s", "recv CPU-s/GiB", "seed CPU-s/GiB", "both CPU-s/GiB",
        "recv RSS MiB", "runs")
w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(str(c).ljust(w[i]) if i < 2 or i == 8 else str(c).rjust(w[i]) for i, c in enumerate(r)).rstrip())
print(f"(medians over {runs} round{'s' * (runs > 1)} of {size} bytes; MB/s = 10^6 bytes/s; CPU-s/GiB = user+sys"
      " seconds per GiB moved, seed = the seeder during the transfer; RSS = the receiver's peak)")
if "pex" in mbps:
    for t in tools:
        if t != "pex" and t in mbps:
            print(f"pex / {t} = {mbps['pex'] / mbps[t]:.2f}x (throughput, medians)")
sys.exit(1 if bad else 0)
EOF
exit $failed
