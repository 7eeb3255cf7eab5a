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

# Free loopback ports, all different.
read -r ADMIN_A TUNNEL_A ADMIN_B TUNNEL_B WEB LOCAL < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)

# A backend to reach: a static page on loopback.
mkdir -p "$work/site"
echo "<h1>hello through the menet tunnel</h1>" > "$work/site/index.html"
python3 -m http.server "$WEB" --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 &
pids+=($!)

start() { # name admin tunnel
    "$MENET" --config /dev/null --admin "127.0.0.1:$2" --tunnel "127.0.0.1:$3" \
        --state "$work/$1.json" 2>"$work/$1.log" &
    pids+=($!)
}
start a "$ADMIN_A" "$TUNNEL_A"
start b "$ADMIN_B" "$TUNNEL_B"

# Both ready (listening, state loaded), the backend too.
for url in "http://127.0.0.1:$ADMIN_A/readyz" "http://127.0.0.1:$ADMIN_B/readyz" "http://127.0.0.1:$WEB/"; do
    for _ in $(seq 100); do
        curl -fs "$url" >/dev/null && break
        sleep 0.05
    done
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
