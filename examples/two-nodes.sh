#!/usr/bin/env bash
# Two menet nodes on loopback: the seed's curl calls, a page fetched through the tunnel, then
# both nodes stopped. Every port is picked free; nothing is left behind.
#
#   examples/two-nodes.sh            # builds target/release/menet if needed
#   MENET=/path/to/menet examples/two-nodes.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MENET=${MENET:-target/release/menet}
if [[ ! -x $MENET ]]; then
    cargo build --release --quiet
fi
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The nodes and the backend bind port 0 and say which port they got; only the local service's
# port is picked beforehand (the seed's body names it).
LOCAL=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# wait_for FILE TEXT: the port printed after TEXT in FILE, within 10 s.
wait_for() {
    for _ in $(seq 200); do
        port=$(grep -o "$2[0-9.]*:[0-9]*" "$1" 2>/dev/null | head -1 | sed 's/.*://') || true
        if [[ -n $port ]]; then
            echo "$port"
            return
        fi
        sleep 0.05
    done
    echo "no '$2' in $1 within 10 s:" >&2
    cat "$1" >&2
    exit 1
}

# A backend to reach: a static page on loopback.
mkdir -p "$work/site"
echo "<h1>hello through the menet tunnel</h1>" > "$work/site/index.html"
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/site" >"$work/web.log" 2>&1 &
pids+=($!)

start() { # name
    "$MENET" --config /dev/null --admin 127.0.0.1:0 --tunnel 127.0.0.1:0 \
        --state "$work/$1.json" 2>"$work/$1.log" &
    pids+=($!)
}
start a
start b
ADMIN_A=$(wait_for "$work/a.log" "admin API listening on ")
ADMIN_B=$(wait_for "$work/b.log" "admin API listening on ")
TUNNEL_B=$(wait_for "$work/b.log" "tunnel port listening on ")
WEB=$(python3 - "$work/web.log" <<'PY'
import re, sys, time
for _ in range(200):
    m = re.search(r"port (\d+)", open(sys.argv[1]).read())
    if m:
        print(m.group(1))
        break
    time.sleep(0.05)
PY
)
[[ -n $WEB ]] || { echo "the backend did not start" >&2; exit 1; }
for admin in "$ADMIN_A" "$ADMIN_B"; do
    curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null
done

set -x
curl -XPOST -d '{"name":"tunnel1", "dest":["127.0.0.1", "'"$TUNNEL_B"'"]}' "http://127.0.0.1:$ADMIN_A/tunnel"
curl -XPOST -d '{"name":"service1", "key":"UHI@&s8sa*S", "type": "local", "addr":["0.0.0.0", "'"$LOCAL"'"]}' "http://127.0.0.1:$ADMIN_A/service"
curl -XPOST -d '{"name":"service1", "key":"UHI@&s8sa*S", "type": "remote", "addr":["127.0.0.1", "'"$WEB"'"]}' "http://127.0.0.1:$ADMIN_B/service"
curl -XPOST -d '{"tunnel": "tunnel1", "service":"service1", "type": "local"}' "http://127.0.0.1:$ADMIN_A/bind"
curl -XPOST -d '{"tunnel": "tunnel1", "service":"service1", "type": "remote"}' "http://127.0.0.1:$ADMIN_B/bind"
page=$(curl -fsS "http://127.0.0.1:$LOCAL/")
curl -s "http://127.0.0.1:$ADMIN_A/config"
set +x
echo
echo "fetched through the tunnel: $page"
grep -q "hello through the menet tunnel" <<<"$page"
echo "node A's tunnel counters:"
curl -s "http://127.0.0.1:$ADMIN_A/metrics" | grep '^menet_tunnel_.*_bytes_total'
echo "ok: two nodes, one tunnel, one page; stopping both"
