#!/usr/bin/env bash
# Swarm benchmark (P6): one seeder and FETCHERS fetchers, each in its own
# network namespace (an emulated host), joined by a bridge that lives in a
# namespace of its own, so the host's network namespace is never touched.
# Every node's uplink is limited with tbf to RATE. Only addresses in the ULA
# prefix fd00:7065:78::/64 are used, all assigned inside these namespaces.
#
#   1. SOLO:  one fetcher alone fetches SIZE_MIB from the seeder.
#   2. SWARM: a fresh seeder; FETCHERS fetchers started together, each given
#             only the seeder's address; time until all are done.
# Prints both times, their ratio (goal <= 1.3), the seeder's upload as a
# multiple of the file (goal <= 1.3) and each fetcher's time and bytes.
#
# MUST RUN AS ROOT (ip netns, veth, bridge, tc). Needs iproute2 (ip, tc),
# python3 and cmp.
#   sudo scripts/swarm-bench.sh     env: FETCHERS=8 SIZE_MIB=128 RATE=200mbit
#                                        TIMEOUT=600 PEX=target/release/pex
set -euo pipefail

FETCHERS=${FETCHERS:-8}; SIZE_MIB=${SIZE_MIB:-128}; RATE=${RATE:-200mbit}
TIMEOUT=${TIMEOUT:-600}
root_dir=$(cd "$(dirname "$0")/.." && pwd)
pex=${PEX:-$root_dir/target/release/pex}
prefix=fd00:7065:78::           # ULA /64; node k (0 = seeder) gets ::(k+1)
tag="pexb$$"                    # unique per run: namespaces pexb<pid>-*
br_ns="$tag-br"
work=""; pids=(); namespaces=()

die() { echo "swarm-bench: $*" >&2; exit 1; }

# ---- preconditions ----------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (it creates network namespaces, veths, a bridge and tc qdiscs); try: sudo $0"
command -v ip >/dev/null || die "'ip' not found: install iproute2 (apt-get install iproute2)"
ip netns list >/dev/null 2>&1 || die "'ip netns' unavailable: install a full iproute2 (apt-get install iproute2), not the busybox ip"
command -v tc >/dev/null || die "'tc' not found: install iproute2 (apt-get install iproute2)"
command -v python3 >/dev/null || die "python3 is needed to read the --json summaries"
command -v cmp >/dev/null || die "cmp not found: install diffutils"
[ -x "$pex" ] || die "no pex binary at $pex: run 'cargo build --release' first (or set PEX)"

# ---- cleanup: processes first, then namespaces, then files -----------------
cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for p in "${namespaces[@]}"; do ip netns del "$p" 2>/dev/null || true; done
  [ -n "$work" ] && rm -rf "$work"
  local left_ns left_pids=""
  left_ns=$(ip netns list | grep "^$tag-" | cut -d' ' -f1 | tr '\n' ' ' || true)
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left_pids+="$p "; done
  if [ -n "$left_ns$left_pids" ]; then
    echo "swarm-bench: LEFT BEHIND: namespaces: ${left_ns:-none}; processes: ${left_pids:-none}" >&2
  else
    echo "cleanup: all ${#namespaces[@]} namespaces, ${#pids[@]} process(es) and the temp dir removed"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s%N; }                                   # nanoseconds
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
ns_of() { if [ "$1" -eq 0 ]; then echo "$tag-s"; else echo "$tag-f$1"; fi; }
addr_of() { printf '%s%x' "$prefix" $(($1 + 1)); }
json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }

# ---- network: bridge namespace, one namespace + veth + tbf per node --------
setup_network() {
  ip netns add "$br_ns"; namespaces+=("$br_ns")
  ip -n "$br_ns" link set lo up
  ip -n "$br_ns" link add br0 type bridge
  ip -n "$br_ns" link set br0 up
  local k ns
  for k in $(seq 0 "$FETCHERS"); do
    ns=$(ns_of "$k")
    ip netns add "$ns"; namespaces+=("$ns")
    ip -n "$ns" link set lo up
    # the pair is made in the bridge namespace; its peer end moves to the node
    ip -n "$br_ns" link add "v$k" type veth peer name eth0 netns "$ns"
    ip -n "$br_ns" link set "v$k" master br0 up
    ip -n "$ns" addr add "$(addr_of "$k")/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
    tc -n "$ns" qdisc add dev eth0 root tbf rate "$RATE" burst 256kbit latency 50ms
  done
  # nodad: addresses are usable at once; bridge ports (no STP) forward at once
}

# ---- seeder: start in its namespace, wait until it prints the root ---------
start_seeder() {   # $1: data dir name
  ip netns exec "$(ns_of 0)" "$pex" seed "$work/file.bin" --listen "[$(addr_of 0)]:9000" \
    --data-dir "$work/$1" --json > "$work/$1.json" 2> "$work/$1.err" &
  seeder_pid=$!; pids+=("$seeder_pid")
  local i
  for i in $(seq 1 600); do grep -q "pex fetch" "$work/$1.err" 2>/dev/null && break; sleep 0.05; done
  grep -q "pex fetch" "$work/$1.err" || die "seeder did not start: $(cat "$work/$1.err")"
  root=$(head -1 "$work/$1.err")
}
stop() { kill -INT "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ---- run -------------------------------------------------------------------
work=$(mktemp -d /tmp/swarm-bench.XXXXXX)
setup_network
head -c $((SIZE_MIB << 20)) /dev/urandom > "$work/file.bin"
file_bytes=$((SIZE_MIB << 20))
echo "nodes: 1 seeder + $FETCHERS fetchers, uplink $RATE each, file $SIZE_MIB MiB, namespaces $tag-*"

# SOLO: fetcher 1 alone, timed from start to exit.
start_seeder seed-solo
t0=$(now)
ip netns exec "$(ns_of 1)" "$pex" fetch "$root" --peer "[$(addr_of 0)]:9000" \
  -o "$work/solo.out" --data-dir "$work/solo" --json > "$work/solo.json" 2> "$work/solo.err" \
  || die "solo fetch failed: $(tail -3 "$work/solo.err")"
t1=$(now); solo=$(secs "$t0" "$t1")
cmp -s "$work/file.bin" "$work/solo.out" || die "solo copy differs"
stop "$seeder_pid"; rm -f "$work/solo.out"
echo "solo:  $solo s"

# SWARM: fresh seeder, all fetchers at once, each knowing only the seeder.
start_seeder seed-swarm
declare -a fpid done_at
t0=$(now)
for k in $(seq 1 "$FETCHERS"); do
  ip netns exec "$(ns_of "$k")" "$pex" fetch "$root" --peer "[$(addr_of 0)]:9000" \
    --listen "[$(addr_of "$k")]:9000" -o "$work/out$k" --data-dir "$work/f$k" --json --seed \
    > "$work/f$k.json" 2> "$work/f$k.err" &
  fpid[k]=$!; pids+=("$!")
done
left=$FETCHERS
while [ "$left" -gt 0 ]; do            # a copy appears under its name only when complete
  for k in $(seq 1 "$FETCHERS"); do
    [ -n "${done_at[k]:-}" ] && continue
    if [ -f "$work/out$k" ]; then done_at[k]=$(now); left=$((left - 1)); continue; fi
    kill -0 "${fpid[k]}" 2>/dev/null || die "fetcher $k exited early: $(tail -3 "$work/f$k.err")"
  done
  [ $(( ($(now) - t0) / 1000000000 )) -lt "$TIMEOUT" ] || die "swarm not done after $TIMEOUT s ($left left)"
  sleep 0.02
done
t1=$(now); swarm=$(secs "$t0" "$t1")
for k in $(seq 1 "$FETCHERS"); do cmp -s "$work/file.bin" "$work/out$k" || die "fetcher $k: copy differs"; done
stop "$seeder_pid"
for k in $(seq 1 "$FETCHERS"); do kill -INT "${fpid[k]}" 2>/dev/null || true; done
for k in $(seq 1 "$FETCHERS"); do wait "${fpid[k]}" 2>/dev/null || true; done

# ---- report ------------------------------------------------------------------
up=$(json "$work/seed-swarm.json" 'd["uploaded_bytes"]')
echo "swarm: $swarm s (all $FETCHERS done, every copy byte-exact)"
awk -v s="$swarm" -v o="$solo" -v u="$up" -v f="$file_bytes" 'BEGIN {
  r = s / o; m = u / f
  printf "ratio swarm/solo: %.3f  (goal <= 1.3: %s)\n", r, (r <= 1.3 ? "met" : "MISSED")
  printf "seeder upload:    %d bytes = %.3f x the file  (goal <= 1.3: %s)\n", u, m, (m <= 1.3 ? "met" : "MISSED") }'
echo "seeder upload per peer (MiB): $(json "$work/seed-swarm.json" \
  '" ".join("%s=%.0f" % (p["address"], p["uploaded_bytes"]/2**20) for p in d["peers"])')"
printf '%-22s %7s %12s %12s %5s  %s\n' fetcher done_s uploaded downloaded peers "from seeder (MiB)"
for k in $(seq 1 "$FETCHERS"); do
  printf '%-22s %7s %12s %12s %5s  %s\n' "f$k ($(addr_of "$k"))" "$(secs "$t0" "${done_at[k]}")" \
    "$(json "$work/f$k.json" 'd["uploaded_bytes"]')" "$(json "$work/f$k.json" 'd["downloaded_bytes"]')" \
    "$(json "$work/f$k.json" 'len(d["peers"])')" \
    "$(json "$work/f$k.json" "'%.0f' % (sum(p['downloaded_bytes'] for p in d['peers'] if p['address'].startswith('[$(addr_of 0)]')) / 2**20)")"
done
