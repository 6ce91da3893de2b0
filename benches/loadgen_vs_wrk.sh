#!/bin/bash
# Usage: benches/loadgen_vs_wrk.sh  (ROUNDS, DUR, CONNS, PORT from the environment; needs wrk and the built peers)
# Interleaved: percore bench vs wrk against epoll-floor; server on CPU 0, client on CPU 1.
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}; CONNS=${CONNS:-64}; PORT=${PORT:-18181}
cd /work/main
taskset -c 0 benches/peers/target/release/epoll-floor --listen 127.0.0.1:$PORT > /tmp/lg-floor.log 2>&1 &
SRV=$!
sleep 0.5
URL=http://127.0.0.1:$PORT/json
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
cpu1() { awk '$1=="cpu1"{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
for r in $(seq 1 $ROUNDS); do
  s0=$(ticks $SRV); c0=($(cpu1))
  taskset -c 1 ./target/release/percore bench --cores 1 --cpus 1 --connections $CONNS --duration ${DUR}s $URL --json /tmp/lg-pc-r$r.json > /tmp/lg-pc-r$r.txt 2>/dev/null
  s1=$(ticks $SRV); c1=($(cpu1))
  python3 -c "
import json; r=json.load(open('/tmp/lg-pc-r$r.json'))
print(f'round $r percore bench: {r[\"requests_per_s\"]:,.0f} req/s  client {r[\"client_cpu_us_per_request\"]:.2f} CPU-us/req ({r[\"per_core\"][0][\"cpu_percent\"]:.0f}% CPU)  errors {r[\"errors\"][\"total\"]}  p50 {r[\"latency_us\"][\"p50\"]:.0f}us p99 {r[\"latency_us\"][\"p99\"]:.0f}us  server CPU {($s1-$s0)/$DUR:.0f}%  CPU1 busy {100*(${c1[0]}-${c0[0]})/(${c1[1]}-${c0[1]}):.0f}%')"
  s0=$(ticks $SRV); c0=($(cpu1))
  taskset -c 1 wrk -t1 -c$CONNS -d${DUR}s --latency $URL > /tmp/lg-wrk-r$r.txt 2>&1 &
  W=$!; sleep 0.2; w0=$(ticks $W); sleep $((DUR-1)); w1=$(ticks $W); wait $W
  s1=$(ticks $SRV); c1=($(cpu1))
  rps=$(awk '/Requests\/sec/{print $2}' /tmp/lg-wrk-r$r.txt)
  p50=$(awk '$1=="50%"{print $2}' /tmp/lg-wrk-r$r.txt); p99=$(awk '$1=="99%"{print $2}' /tmp/lg-wrk-r$r.txt)
  python3 -c "print(f'round $r wrk:           {$rps:,.0f} req/s  client {($w1-$w0)*1e4/($rps*($DUR-1)):.2f} CPU-us/req ({($w1-$w0)/($DUR-1):.0f}% CPU)  p50 $p50 p99 $p99  server CPU {($s1-$s0)/$DUR:.0f}%  CPU1 busy {100*(${c1[0]}-${c0[0]})/(${c1[1]}-${c0[1]}):.0f}%')"
  grep -i "error\|Non-2xx" /tmp/lg-wrk-r$r.txt
done
kill $SRV
