#!/usr/bin/env bash
# Idle cost of the daemon: RSS and CPU of `tierkeep run` over a minute with an hour's
# interval (after its first backup), on local zones. Not a test; prints measurements.
#
#   cargo build --release -p tierkeep && tests/bench/idle.sh [SECONDS] [S3-CONFIG-SNIPPET]
set -euo pipefail
secs="${1:-60}"
bin="${TIERKEEP_BIN:-$(dirname "$0")/../../target/release/tierkeep}"
[ -x "$bin" ] || { echo "build first: cargo build --release -p tierkeep" >&2; exit 2; }
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/src"
head -c 10000000 /dev/urandom > "$work/src/data.bin"
cat > "$work/tierkeep.toml" <<TOML
host_id = "idle"
data_dir = "$work/data"
[source]
paths = ["$work/src"]
[schedule]
interval = "1h"
aging = "3h"
[daemon]
metrics_addr = "127.0.0.1:0"
${2:-}
TOML
# A restart is the usual case: a configured policy is then already compiled in
# data_dir/policy-cache. TIERKEEP_IDLE_COLD=1 measures the very first start instead.
if [ -z "${TIERKEEP_IDLE_COLD:-}" ]; then
  "$bin" --config "$work/tierkeep.toml" run 2> "$work/first.log" &
  first=$!
  for _ in $(seq 100); do grep -q "scheduled backup created" "$work/first.log" && break; sleep 0.1; done
  kill -TERM "$first"; wait "$first" || true
fi
"$bin" --config "$work/tierkeep.toml" run 2> "$work/log" &
pid=$!
# Let it start, recover and take its first backup.
for _ in $(seq 100); do grep -q "scheduled backup created" "$work/log" && break; sleep 0.1; done
sleep 2
hz=$(getconf CLK_TCK)
read_cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
ctx() { awk '/^voluntary_ctxt_switches/ {v=$2} /^nonvoluntary_ctxt_switches/ {n=$2} END {print v + n}' "/proc/$pid/status"; }
cpu0=$(read_cpu); ctx0=$(ctx); t0=$(date +%s.%N)
max_rss=0
for _ in $(seq "$secs"); do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  [ "$rss" -gt "$max_rss" ] && max_rss=$rss
  sleep 1
done
cpu1=$(read_cpu); ctx1=$(ctx); t1=$(date +%s.%N)
threads=$(awk '/^Threads/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
python3 - "$cpu0" "$cpu1" "$hz" "$t0" "$t1" "$max_rss" "$hwm" "$ctx0" "$ctx1" "$threads" <<'PY'
import sys
c0, c1, hz, t0, t1, rss, hwm, x0, x1, th = sys.argv[1:]
wall = float(t1) - float(t0)
cpu = (int(c1) - int(c0)) / int(hz)
print(f"idle over {wall:.0f} s: RSS max {int(rss)/1024:.1f} MiB (peak since start {int(hwm)/1024:.1f} MiB), "
      f"CPU {cpu:.2f} s ({100*cpu/wall:.3f} %), context switches {int(x1)-int(x0)} "
      f"({(int(x1)-int(x0))/wall:.2f}/s), threads {th}")
PY
