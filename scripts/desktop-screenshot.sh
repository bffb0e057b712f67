#!/usr/bin/env bash
# See the desktop app on a machine without a screen: start it on a private
# Xvfb display, wait for its first paint with data ("ui ready" on stdout),
# save a screenshot, then close it with SIGTERM (a clean shutdown).
#   scripts/desktop-screenshot.sh [app binary] [output png]
set -euo pipefail
app=${1:-target/release/galaxy-desktop}
out=${2:-target/screenshots/run.png}
mkdir -p "$(dirname "$out")"
export APP="$app" OUT="$out"
exec xvfb-run -a -s "-screen 0 1280x800x24" bash -c '
  log=$(mktemp)
  "$APP" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q "ui ready" "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "the app exited before its first paint"; exit 1; }
    sleep 0.1
  done
  grep -q "ui ready" "$log" || { cat "$log"; echo "no first paint within 60 s"; kill -TERM "$pid"; exit 1; }
  grep "ui ready" "$log"
  import -window root "$OUT"
  kill -TERM "$pid"; wait "$pid" || true
  rm -f "$log"
  echo "screenshot: $OUT"
'
