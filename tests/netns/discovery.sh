#!/usr/bin/env bash
# Real-hosts test of LAN discovery: zero configuration (no --peer, no
# --discovery-interface) between peershare nodes in network namespaces on a
# private bridge. Never touches the host's own network.
#
#   sudo bash tests/netns/discovery.sh [path-to-peershare-binary]
#
# Default binary: target/release/peershare, else target/debug/peershare.
# Needs root, iproute2 (`ip netns`), python3, coreutils. See README.md here.
set -Eeuo pipefail

MAINPID=$$
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

SW="psd-sw-$$"
NS_A="psd-a-$$"
NS_B="psd-b-$$"
NS_C="psd-c-$$"
NS_D="psd-d-$$"
NAMESPACES=()     # created by this run, deleted on exit
SERVE_PIDS=()     # background serves of this run, stopped on exit
SERVE_NAMES=()    # in start order, for the logs
declare -A SERVE_LOG=()  # name -> log prefix
PASSED=0
FAILED=0
SUMMARY_DONE=0
T=""

# ---------------------------------------------------------------- reporting

summary() {
    [[ $SUMMARY_DONE == 1 ]] && return 0
    SUMMARY_DONE=1
    echo "discovery netns: $PASSED passed, $FAILED failed"
}

pass() {
    PASSED=$((PASSED + 1))
    echo "PASS: $*"
}

dump_logs() {
    local name f
    for name in "${SERVE_NAMES[@]}"; do
        for f in "${SERVE_LOG[$name]}.out" "${SERVE_LOG[$name]}.err"; do
            [[ -f $f ]] || continue
            echo "----- serve $name: ${f##*.} ($f)"
            cat "$f" || true
        done
    done
    echo "-----"
}

# fail WHAT EXPECTED SEEN: one FAIL line, the logs, the summary, exit 1.
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL: $1"
    echo "      expected: $2"
    echo "      seen:     $3"
    dump_logs
    exit 1
}

on_err() {
    local rc=$1 line=$2 cmd=$3
    # In a subshell / command substitution: let the parent report it.
    [[ $BASHPID == "$MAINPID" ]] || exit "$rc"
    trap - ERR
    FAILED=$((FAILED + 1))
    echo "FAIL: unexpected error (exit status $rc) at line $line: $cmd"
    dump_logs
    exit 1
}

# ---------------------------------------------------------------- cleanup

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

delete_ns() {
    local ns=$1 pid
    # Anything still running inside (only our own processes live there).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid ns
    trap - ERR EXIT INT TERM HUP
    set +e
    if [[ $rc != 0 && $FAILED == 0 ]]; then
        FAILED=1
        echo "FAIL: aborted (exit status $rc${SIGNAL:+, interrupted by $SIGNAL})"
        dump_logs
    fi
    for pid in "${SERVE_PIDS[@]}"; do
        stop_pid "$pid"
    done
    for ns in "${NAMESPACES[@]}"; do
        delete_ns "$ns"
    done
    [[ -n $T && -d $T ]] && rm -rf "$T"
    summary
    if [[ $FAILED != 0 && $rc == 0 ]]; then rc=1; fi
    exit "$rc"
}

trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR
trap cleanup EXIT
SIGNAL=""
trap 'SIGNAL=SIGINT; exit 130' INT
trap 'SIGNAL=SIGTERM; exit 143' TERM
trap 'SIGNAL=SIGHUP; exit 129' HUP

# ---------------------------------------------------------------- helpers

now_us() { echo "${EPOCHREALTIME/./}"; }
secs_since() { awk -v a="$1" -v b="$(now_us)" 'BEGIN { printf "%.2f", (b - a) / 1e6 }'; }

# in NS CMD...: run CMD inside namespace NS, bounded in time.
in_ns() {
    local ns=$1
    shift
    timeout --kill-after=5 60 ip netns exec "$ns" "$@"
}

# ps NS DATADIR ARGS...: peershare inside NS with its own data dir.
ps_run() {
    local ns=$1 dir=$2
    shift 2
    in_ns "$ns" "$BIN" --data-dir "$dir" "$@"
}

# Stale namespaces of earlier runs that crashed (their script is gone).
delete_stale() {
    local ns owner
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns == psd-* ]] || continue
        owner=${ns##*-}
        if [[ $owner =~ ^[0-9]+$ ]] && [[ $owner != "$MAINPID" ]] &&
            grep -qa discovery.sh "/proc/$owner/cmdline" 2>/dev/null; then
            continue # a run in progress right now
        fi
        echo "note: deleting stale namespace $ns from an earlier run"
        delete_ns "$ns"
    done
}

add_switch() {
    ip netns add "$SW"
    NAMESPACES+=("$SW")
    ip -n "$SW" link set lo up
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 up
}

# add_host NS N: namespace NS with eth0 = 10.77.0.N/24 on the switch.
add_host() {
    local ns=$1 n=$2
    ip netns add "$ns"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    # Both ends are created outside the host's namespace: the veth is made
    # in the switch namespace and its peer moved straight into the host.
    ip -n "$SW" link add "v$n" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "v$n" master br0
    ip -n "$SW" link set "v$n" up
    ip -n "$ns" addr add "10.77.0.$n/24" brd 10.77.0.255 dev eth0
    ip -n "$ns" link set eth0 up
}

# start_serve NAME NS DATADIR: background serve, waits for `listening on`.
start_serve() {
    local name=$1 ns=$2 dir=$3 log="$T/serve-$1" pid deadline
    SERVE_LOG[$name]=$log
    SERVE_NAMES+=("$name")
    # Paced uploads: the download from A and B lasts long enough for the
    # peer that answers second to join (the first one to answer starts it).
    ip netns exec "$ns" "$BIN" --data-dir "$dir" -v serve --announce-interval 1 \
        --max-upload-rate 40MB >"$log.out" 2>"$log.err" &
    pid=$!
    SERVE_PIDS+=("$pid")
    eval "PID_$name=$pid"
    deadline=$(($(now_us) + 15000000))
    while ! grep -q '^listening on ' "$log.out" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            local rc=0
            wait "$pid" || rc=$?
            fail "serve on $name starts" "a 'listening on' line on stdout" \
                "serve exited with status $rc before listening"
        fi
        if (($(now_us) > deadline)); then
            fail "serve on $name starts" "a 'listening on' line within 15 s" \
                "stdout: $(tr '\n' ' ' <"$log.out")"
        fi
        sleep 0.05
    done
    pass "serve on $name: $(grep -m1 '^listening on ' "$log.out")"
}

# peers_file_has FILE NODE_ID: exit 0 when FILE's peers list NODE_ID.
peers_file_has() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    ids = [p["node_id"] for p in doc["peers"]]
except Exception:
    sys.exit(2)
sys.exit(0 if sys.argv[2] in ids else 1)
EOF
}

peers_file_ids() {
    python3 - "$1" <<'EOF' 2>/dev/null || echo "(no readable peers file)"
import json, sys
with open(sys.argv[1]) as f:
    doc = json.load(f)
print(" ".join(f'{p["node_id"][:12]}..@{p["addr"]}/{p.get("found_via")}' for p in doc["peers"]) or "(no peers)")
EOF
}

# ---------------------------------------------------------------- preflight

if [[ $EUID != 0 ]]; then
    echo "discovery.sh: must run as root (creates network namespaces)" >&2
    exit 2
fi
for tool in ip python3 timeout cmp awk head; do
    command -v "$tool" >/dev/null || { echo "discovery.sh: needs $tool" >&2; exit 2; }
done

if [[ $# -ge 1 ]]; then
    BIN=$1
elif [[ -x $ROOT/target/release/peershare ]]; then
    BIN=$ROOT/target/release/peershare
else
    BIN=$ROOT/target/debug/peershare
fi
[[ -x $BIN ]] || { echo "discovery.sh: no peershare binary at $BIN (build it first)" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
echo "binary: $BIN"

# Zero configuration means defaults: no PEERSHARE_* settings from the caller.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PEERSHARE_' || true)

START=$(now_us)
delete_stale
T=$(mktemp -d /tmp/psd-test.XXXXXX)

# ---------------------------------------------------------------- network

add_switch
add_host "$NS_A" 1
add_host "$NS_B" 2
add_host "$NS_C" 3
pass "network: bridge br0 in $SW; $NS_A=10.77.0.1 $NS_B=10.77.0.2 $NS_C=10.77.0.3"

# ---------------------------------------------------------------- data

for h in a b c d; do mkdir -p "$T/$h/data" "$T/$h/files"; done
echo "only on A" >"$T/a/files/a-only.txt"
echo "only on B" >"$T/b/files/b-only.txt"
echo "only on D" >"$T/d/files/d-only.txt"
head -c $((16 * 1024 * 1024)) /dev/urandom >"$T/a/files/common.bin"
cp "$T/a/files/common.bin" "$T/b/files/common.bin"

ps_run "$NS_A" "$T/a/data" share "$T/a/files/a-only.txt" "$T/a/files/common.bin" --json >"$T/a/share.json"
ps_run "$NS_B" "$T/b/data" share "$T/b/files/b-only.txt" "$T/b/files/common.bin" --json >"$T/b/share.json"
id_of() { # id_of SHARE_JSON NAME
    python3 -c 'import json,sys; print(next(e["id"] for e in json.load(open(sys.argv[1])) if e["name"] == sys.argv[2]))' "$1" "$2"
}
COMMON_ID=$(id_of "$T/a/share.json" common.bin)
COMMON_ID_B=$(id_of "$T/b/share.json" common.bin)
[[ $COMMON_ID == "$COMMON_ID_B" ]] ||
    fail "common.bin has one ID on A and B" "$COMMON_ID" "$COMMON_ID_B on B"

NODE_A=$(ps_run "$NS_A" "$T/a/data" id)
NODE_B=$(ps_run "$NS_B" "$T/b/data" id)
NODE_C=$(ps_run "$NS_C" "$T/c/data" id)
[[ $NODE_A =~ ^[0-9a-f]+$ && $NODE_B =~ ^[0-9a-f]+$ && $NODE_A != "$NODE_B" ]] ||
    fail "peershare id" "two distinct hex node IDs" "A='$NODE_A' B='$NODE_B'"
pass "A and B share their files (common.bin ${COMMON_ID:0:12}..); node IDs A=${NODE_A:0:12}.. B=${NODE_B:0:12}.. C=${NODE_C:0:12}.."

# ---------------------------------------------------------------- serve A, B

start_serve A "$NS_A" "$T/a/data"
start_serve B "$NS_B" "$T/b/data"

# ---------------------------------------------------------------- ls from C

rc=0
ps_run "$NS_C" "$T/c/data" ls --json >"$T/c/ls.json" 2>"$T/c/ls.err" || rc=$?
[[ $rc == 0 ]] || fail "C: peershare ls --json (no --peer)" "exit status 0" \
    "status $rc, stderr: $(cat "$T/c/ls.err")"
if why=$(python3 - "$T/c/ls.json" "$COMMON_ID" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
by_name = {r["name"]: r for r in rows}
problems = []
for name in ("a-only.txt", "b-only.txt", "common.bin"):
    if name not in by_name:
        problems.append(f"{name} missing")
c = by_name.get("common.bin")
if c is not None:
    if c["id"] != sys.argv[2]:
        problems.append(f"common.bin id {c['id']}")
    if c.get("peer_count") != 2:
        problems.append(f"common.bin peer_count={c.get('peer_count')} peers={c.get('peers')}")
for name in ("a-only.txt", "b-only.txt"):
    r = by_name.get(name)
    if r is not None and r.get("peer_count") != 1:
        problems.append(f"{name} peer_count={r.get('peer_count')}")
if problems:
    print("; ".join(problems), "| listed:", [(r["name"], r.get("peer_count")) for r in rows])
    sys.exit(1)
EOF
); then
    pass "C: ls --json lists a-only.txt, b-only.txt, common.bin (common.bin peer_count 2)"
else
    fail "C: ls --json (no --peer)" "a-only.txt, b-only.txt, common.bin with peer_count 2" "$why"
fi

# ---------------------------------------------------------------- get from C

mkdir -p "$T/c/out"
OUT="$T/c/out/common.bin"
rc=0
t0=$(now_us)
ps_run "$NS_C" "$T/c/data" get "$COMMON_ID" --json -o "$OUT" >"$T/c/get.json" 2>"$T/c/get.err" || rc=$?
took=$(secs_since "$t0")
[[ $rc == 0 ]] || fail "C: peershare get <common-id> --json -o OUT (no --peer)" "exit status 0" \
    "status $rc, stderr: $(tail -n 5 "$T/c/get.err")"
cmp -s "$T/a/files/common.bin" "$OUT" ||
    fail "C: downloaded common.bin" "byte-identical to A's common.bin" "$(cmp "$T/a/files/common.bin" "$OUT" 2>&1 || true)"
if why=$(python3 - "$T/c/get.json" "$NODE_A" "$NODE_B" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
peers = s.get("peers", [])
desc = [(p.get("addr"), (p.get("node_id") or "")[:12], p.get("bytes"), p.get("chunks")) for p in peers]
ok = (len(peers) == 2
      and all(isinstance(p.get("bytes"), int) and p["bytes"] > 0 for p in peers)
      and {p.get("node_id") for p in peers} == {sys.argv[2], sys.argv[3]})
print(desc)
sys.exit(0 if ok else 1)
EOF
); then
    pass "C: get without --peer: exit 0, byte-identical, in $took s, chunks from both A and B: $why"
else
    fail "C: get summary peers" "two entries (A and B), each with bytes > 0" "$why"
fi

# ---------------------------------------------------------------- peers from C

rc=0
ps_run "$NS_C" "$T/c/data" peers --json >"$T/c/peers.json" 2>"$T/c/peers.err" || rc=$?
[[ $rc == 0 ]] || fail "C: peershare peers --json" "exit status 0" "status $rc, stderr: $(cat "$T/c/peers.err")"
if why=$(python3 - "$T/c/peers.json" "$NODE_A" "$NODE_B" <<'EOF'
import json, sys
found = json.load(open(sys.argv[1]))
ids = {p["node_id"]: p["addr"] for p in found}
print({k[:12] + "..": v for k, v in ids.items()})
sys.exit(0 if sys.argv[2] in ids and sys.argv[3] in ids else 1)
EOF
); then
    pass "C: peers --json lists A and B: $why"
else
    fail "C: peers --json" "node IDs of A (${NODE_A:0:12}..) and B (${NODE_B:0:12}..)" "$why"
fi

# Both families on their own, when the binary has --discovery-family: with
# both, answers over IPv6 link-local may win, and IPv4 broadcast would go
# untested.
if "$BIN" peers --help 2>/dev/null | grep -q -- '--discovery-family'; then
    for fam in ipv4 ipv6; do
        rc=0
        ps_run "$NS_C" "$T/c/data" peers --json --discovery-family "$fam" \
            >"$T/c/peers-$fam.json" 2>"$T/c/peers-$fam.err" || rc=$?
        [[ $rc == 0 ]] || fail "C: peers --json --discovery-family $fam" "exit status 0" \
            "status $rc, stderr: $(cat "$T/c/peers-$fam.err")"
        if why=$(python3 - "$T/c/peers-$fam.json" "$fam" "$NODE_A" 10.77.0.1 "$NODE_B" 10.77.0.2 <<'PY'
import ipaddress, json, sys
from urllib.parse import urlsplit
found = json.load(open(sys.argv[1]))
fam = sys.argv[2]
ids = {p["node_id"]: p["addr"] for p in found}
print({k[:12] + "..": v for k, v in ids.items()})
ok = True
for node, v4 in ((sys.argv[3], sys.argv[4]), (sys.argv[5], sys.argv[6])):
    addr = ids.get(node)
    if addr is None:
        ok = False
    elif fam == "ipv4":
        ok &= addr == f"{v4}:9000"
    else:
        host = urlsplit("//" + addr).hostname.split("%")[0]
        ok &= ipaddress.ip_address(host).is_link_local and addr.endswith(":9000")
sys.exit(0 if ok else 1)
PY
        ); then
            pass "C: peers --json --discovery-family $fam lists A and B: $why"
        else
            fail "C: peers --json --discovery-family $fam" \
                "A and B at their $fam addresses, port 9000" "$why"
        fi
    done
fi

# ---------------------------------------------------------------- A sees B

PEERS_A="$T/a/data/peers.json"
deadline=$(($(now_us) + 10000000))
until peers_file_has "$PEERS_A" "$NODE_B"; do
    (($(now_us) < deadline)) ||
        fail "A's peers.json lists B" "B's node ID ${NODE_B:0:12}.. within 10 s" "$(peers_file_ids "$PEERS_A")"
    sleep 0.1
done
pass "A's peers.json lists B (nodes see each other): $(peers_file_ids "$PEERS_A")"

# ---------------------------------------------------------------- D joins

add_host "$NS_D" 4
ps_run "$NS_D" "$T/d/data" share "$T/d/files/d-only.txt" >/dev/null
NODE_D=$(ps_run "$NS_D" "$T/d/data" id)
start_serve D "$NS_D" "$T/d/data"
t0=$(now_us)
deadline=$((t0 + 10000000))
until peers_file_has "$PEERS_A" "$NODE_D"; do
    (($(now_us) < deadline)) ||
        fail "A's peers.json gains D" "D's node ID ${NODE_D:0:12}.. within 10 s" "$(peers_file_ids "$PEERS_A")"
    sleep 0.05
done
pass "A saw D (10.77.0.4, ${NODE_D:0:12}..) $(secs_since "$t0") s after D was listening"

# ---------------------------------------------------------------- D leaves

kill -TERM "$PID_D"
t0=$(now_us)
deadline=$((t0 + 10000000))
while kill -0 "$PID_D" 2>/dev/null; do
    (($(now_us) < deadline)) || fail "D's serve stops on SIGTERM" "exit within 10 s" "still running"
    sleep 0.05
done
rc=0
wait "$PID_D" || rc=$?
[[ $rc == 0 ]] || fail "D's serve stops on SIGTERM" "exit status 0" "status $rc"
pass "D's serve exited 0 on SIGTERM after $(secs_since "$t0") s"
t0=$(now_us)
deadline=$((t0 + 10000000))
while peers_file_has "$PEERS_A" "$NODE_D"; do
    (($(now_us) < deadline)) ||
        fail "A's peers.json drops D" "D's node ID gone within 10 s" "$(peers_file_ids "$PEERS_A")"
    sleep 0.05
done
pass "A forgot D $(secs_since "$t0") s after D stopped"
peers_file_has "$PEERS_A" "$NODE_B" ||
    fail "A's peers.json still lists B after D left" "B's node ID" "$(peers_file_ids "$PEERS_A")"
pass "A's peers.json still lists B: $(peers_file_ids "$PEERS_A")"

echo "total time: $(secs_since "$START") s"
# summary line printed by the EXIT trap after cleanup
