#!/usr/bin/env bash
# Times `pex fetch` of a 1 MiB file between two network namespaces on one
# bridge, by each means of finding the seeder: --peer NODEID@ADDR (the
# baseline), a ticket, remembered peers, the LAN (root alone) and a local
# Mainline DHT (root alone, bootstrap node in a third namespace). Prints the
# median wall time of RUNS fetches per means (process start to exit) and its
# ratio to the baseline measured in the same run.
#
# MUST RUN AS ROOT (ip netns, veth, bridge). Uses only addresses inside the
# namespaces it creates (fd77::/64, 10.77.0.0/24, link-local) and deletes them.
#   sudo scripts/discovery-bench.sh      env: RUNS=15 PEX=target/release/pex
set -euo pipefail
RUNS=${RUNS:-15}
PEX=$(realpath "${PEX:-target/release/pex}")
[ -x "$PEX" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "discovery-bench: needs root" >&2; exit 1; }
tag=pxb$$
work=$(mktemp -d /tmp/discovery-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Background jobs are subshells: kill what runs inside each namespace too.
  for n in br 1 2 3; do
    ip netns pids "$tag-$n" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$tag-$n" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$tag-br"
ip -n "$tag-br" link add br0 type bridge mcast_snooping 0
ip -n "$tag-br" link set br0 up
for k in 1 2 3; do
  ip netns add "$tag-$k"
  ip -n "$tag-br" link add "v$k" type veth peer name eth0 netns "$tag-$k"
  ip -n "$tag-br" link set "v$k" master br0 up
  ip netns exec "$tag-$k" sysctl -qw net.ipv6.conf.eth0.accept_dad=0
  ip -n "$tag-$k" addr add "fd77::$k/64" dev eth0 nodad
  ip -n "$tag-$k" addr add "10.77.0.$k/24" dev eth0
  ip -n "$tag-$k" link set lo up
  ip -n "$tag-$k" link set eth0 up
done
sleep 0.2
at() { local k=$1; shift; ip netns exec "$tag-$k" "$@"; }
head -c $((1 << 20)) /dev/urandom >"$work/f.bin"
PEX_NO_LAN=1 at 3 "$PEX" serve -q --dht --dht-bootstrap none --dht-port 6881 --data-dir "$work/b" >/dev/null 2>&1 &
pids+=($!)
at 1 "$PEX" seed "$work/f.bin" --listen '[::]:9000' --dht --dht-bootstrap 10.77.0.3:6881 \
  --data-dir "$work/s" >"$work/seed.out" 2>"$work/seed.err" &
pids+=($!)
for _ in $(seq 200); do grep -q "announced on the DHT" "$work/seed.err" 2>/dev/null && break; sleep 0.05; done
root=$(head -1 "$work/seed.out")
peer=$(grep -m1 -- "--peer .*@\[fd77::1\]" "$work/seed.out" | sed 's/.*--peer //')
ticket=$(grep -m1 '^pex:' "$work/seed.out")

# One fetch; prints its wall time in ms. $1: extra env, rest: fetch arguments.
once() {
  local env=$1 i=$2; shift 2
  local t0 t1
  rm -f "$work/out.bin"
  t0=$(date +%s%N)
  at 2 env $env "$PEX" fetch "$@" -q -o "$work/out.bin" --data-dir "$work/f$i" >/dev/null 2>"$work/fetch.err" \
    || { echo "fetch failed: $(cat "$work/fetch.err")" >&2; exit 1; }
  t1=$(date +%s%N)
  cmp -s "$work/out.bin" "$work/f.bin" || { echo "wrong bytes" >&2; exit 1; }
  echo $(((t1 - t0) / 1000))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A result
for means in peer ticket remembered lan dht; do
  : >"$work/$means.t"
done
for i in $(seq "$RUNS"); do
  # Interleaved, each in a fresh data directory (remembered: one primed by a --peer fetch).
  once PEX_NO_LAN=1 "p$i" "$root" --peer "$peer" --no-remember >>"$work/peer.t"
  once PEX_NO_LAN=1 "t$i" "$ticket" --no-remember >>"$work/ticket.t"
  once PEX_NO_LAN=1 "r$i" "$root" --peer "$peer" >/dev/null
  once PEX_NO_LAN=1 "r$i" "$root" >>"$work/remembered.t"
  once PEX_NO_LAN=0 "l$i" "$root" --no-remember >>"$work/lan.t"
  once PEX_NO_LAN=1 "d$i" "$root" --no-remember --dht --dht-bootstrap 10.77.0.3:6881 >>"$work/dht.t"
done
base=$(median <"$work/peer.t")
printf "%-11s %10s %8s   (median of %d fetches of 1 MiB, wall time of the process)\n" means ms "÷ peer" "$RUNS"
for means in peer ticket remembered lan dht; do
  m=$(median <"$work/$means.t")
  printf "%-11s %10.1f %8.2f\n" "$means" "$(echo "$m / 1000" | bc -l)" "$(echo "$m / $base" | bc -l)"
done
