#!/usr/bin/env bash
# Real-hosts test of a dead network path: host A serves a file, host B
# downloads it, and A's link is taken down mid-transfer for OUTAGE seconds,
# then up again. B must notice the silence within seconds (saying so on its
# progress line), keep trying, move again within a few seconds of the link
# coming back, and finish with the file verified. The times are measured
# and printed. Never touches the host's own network.
#
#   sudo bash tests/netns/link.sh [path-to-peershare-binary]
#
# Needs root, iproute2, coreutils (sha256sum, timeout), awk.
set -Eeuo pipefail

MAINPID=$$
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUTAGE=${OUTAGE:-20}
# Targets, seconds: silence noticed within (the client's stall timeout is
# 8 s), and moving again within, after the link is back.
DETECT_WITHIN=12
RECOVER_WITHIN=8

SW="psl-sw-$$"
NS_A="psl-a-$$"
NS_B="psl-b-$$"
NAMESPACES=()
PIDS=()
T=""

cleanup() {
    local rc=$? pid ns
    trap - EXIT INT TERM HUP
    set +e
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    [[ -n $T && -d $T ]] && rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

fail() {
    echo "FAIL: $1"
    echo "      expected: $2"
    echo "      seen:     $3"
    for f in "$T"/serve.err "$T"/get.log; do
        [[ -f $f ]] && { echo "----- $f"; cat "$f"; }
    done
    echo "link netns: 0 passed, 1 failed"
    exit 1
}
pass() { echo "PASS: $*"; }

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

if [[ $EUID != 0 ]]; then
    echo "link.sh: must run as root (creates network namespaces)" >&2
    exit 2
fi
if [[ $# -ge 1 ]]; then
    BIN=$1
elif [[ -x $ROOT/target/release/peershare ]]; then
    BIN=$ROOT/target/release/peershare
else
    BIN=$ROOT/target/debug/peershare
fi
[[ -x $BIN ]] || { echo "link.sh: no peershare binary at $BIN" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PEERSHARE_' || true)
T=$(mktemp -d)

# A bridge in its own namespace; hosts A (10.78.0.1) and B (10.78.0.2).
ip netns add "$SW"; NAMESPACES+=("$SW")
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
for n in 1 2; do
    ns=$NS_A; [[ $n == 2 ]] && ns=$NS_B
    ip netns add "$ns"; NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "$SW" link add "v$n" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "v$n" master br0
    ip -n "$SW" link set "v$n" up
    ip -n "$ns" addr add "10.78.0.$n/24" dev eth0
    ip -n "$ns" link set eth0 up
done

# A shares 48 MiB and serves it at 4 MB/s: the transfer takes about 12 s
# of link time, so the outage falls in its middle.
head -c $((48 * 1024 * 1024)) /dev/urandom >"$T/f.bin"
ip netns exec "$NS_A" "$BIN" -q --data-dir "$T/a" share "$T/f.bin" >"$T/share.out"
ID=$(awk '{print $1; exit}' "$T/share.out")
ip netns exec "$NS_A" "$BIN" --data-dir "$T/a" serve --no-discovery \
    --listen 10.78.0.1:9000 --max-upload-rate 4MB >"$T/serve.out" 2>"$T/serve.err" &
PIDS+=("$!")
for _ in $(seq 100); do grep -q '^listening on' "$T/serve.out" && break; sleep 0.1; done
grep -q '^listening on' "$T/serve.out" || fail "serve starts" "listening on" "$(cat "$T/serve.out")"

# B downloads; every stderr line (a progress line a second) is stamped.
( ip netns exec "$NS_B" timeout 300 "$BIN" --data-dir "$T/b" get "$ID" --no-discovery \
    --peer 10.78.0.1:9000 -o "$T/got.bin" 2>&1 >/dev/null; echo "EXIT $?" ) |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$T/get.log" &
PIDS+=("$!")

percent() { # the last progress percentage in the log, or 0
    local p
    p=$(grep -o '([0-9]*%)' "$T/get.log" | tail -n 1 | tr -dc 0-9)
    echo "${p:-0}"
}
for _ in $(seq 300); do (($(percent) >= 15)) && break; sleep 0.1; done
(($(percent) >= 15)) || fail "the download starts" "15 % within 30 s" "$(tail -3 "$T/get.log")"

DOWN_AT=$(now)
AT_DOWN=$(percent)
ip -n "$NS_A" link set eth0 down
pass "A's link down at ${AT_DOWN} %"
sleep "$OUTAGE"
UP_AT=$(now)
ip -n "$NS_A" link set eth0 up
pass "A's link up again after $(elapsed "$DOWN_AT" "$UP_AT") s"

for _ in $(seq 600); do grep -q '^[0-9.]* EXIT' "$T/get.log" && break; sleep 0.1; done
grep -q '^[0-9.]* EXIT 0$' "$T/get.log" || fail "get finishes" "EXIT 0" "$(tail -3 "$T/get.log")"
cmp -s "$T/f.bin" "$T/got.bin" || fail "the file is verified" "identical bytes" "they differ"
pass "get exited 0 with the file byte-identical"

# When the silence was noticed: the first line saying so after the link
# went down.
SEEN_AT=$(awk -v t="$DOWN_AT" '$1 > t && /reconnecting/ { print $1; exit }' "$T/get.log")
[[ -n $SEEN_AT ]] || fail "the outage is shown" "a line saying the peer is lost, reconnecting" "$(cat "$T/get.log")"
DETECT=$(elapsed "$DOWN_AT" "$SEEN_AT")
awk -v d="$DETECT" -v m="$DETECT_WITHIN" 'BEGIN { exit !(d <= m) }' ||
    fail "silence noticed in time" "within $DETECT_WITHIN s" "$DETECT s"
pass "silence noticed and shown $DETECT s after the link went down"

# Moving again: the first progress line after the link came back whose
# percentage is above the one at the outage.
MOVED_AT=$(python3 - "$T/get.log" "$UP_AT" "$AT_DOWN" <<'PY'
import re, sys
log, up, before = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
for line in open(log):
    stamp, _, text = line.partition(" ")
    m = re.search(r"\((\d+)%\)", text)
    if float(stamp) > up and m and int(m.group(1)) > before:
        print(stamp)
        break
PY
)
[[ -n $MOVED_AT ]] || MOVED_AT=$(awk '/EXIT/ { print $1; exit }' "$T/get.log")
RECOVER=$(elapsed "$UP_AT" "$MOVED_AT")
awk -v d="$RECOVER" -v m="$RECOVER_WITHIN" 'BEGIN { exit !(d <= m) }' ||
    fail "moving again soon after the link is back" "within $RECOVER_WITHIN s" "$RECOVER s"
pass "moving again $RECOVER s after the link came back (outage ${OUTAGE} s)"
echo "link netns: 5 passed, 0 failed (detected after $DETECT s, recovered $RECOVER s after the link returned)"
