#!/usr/bin/env bash
# Accepted jobs per second with the durable log (group commit, fdatasync per batch),
# and the latency it adds: POST /v1/jobs/webhook?delay=1h against POST /echo of the
# same body, on the same server, rounds interleaved. Server on CPU 0, wrk on CPU 1.
# Usage: benches/jobs.sh [rounds] [seconds]   (needs wrk; builds percore)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
cargo build --release --quiet
data=$(mktemp -d)
trap 'rm -rf "$data"; kill $server 2>/dev/null || true' EXIT
taskset -c 0 target/release/percore serve --listen 127.0.0.1:18090 --cores 1 --cpus 0 \
  --data-dir "$data" --queue-capacity 100000000 > "$data/server.log" &
server=$!
sleep 1
body='{"url":"http://127.0.0.1:9/hook","payload":{"order":42,"total":"19.99"}}'
echo "date: $(date -u +%FT%TZ)  kernel: $(uname -r)  cpus: $(nproc)  disk: $(df --output=source "$data" | tail -1)"
echo "| round | target | req/s | p50 | p99 |"
echo "|---|---|---:|---:|---:|"
for round in $(seq "$rounds"); do
  for target in jobs echo; do
    if [ "$target" = jobs ]; then url="http://127.0.0.1:18090/v1/jobs/webhook?delay=1h"; else url="http://127.0.0.1:18090/echo"; fi
    out=$(taskset -c 1 wrk -t1 -c64 -d"${seconds}s" --latency -s benches/post.lua "$url" -- "$body")
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    p50=$(awk '$1=="50%"{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
    echo "| $round | $target | $rps | $p50 | $p99 |${non2xx:+ non-2xx: $non2xx}"
  done
done
echo "jobs accepted and durable: $(curl -s http://127.0.0.1:18090/metrics | awk '/^percore_jobs_waiting /{print $2}')"
