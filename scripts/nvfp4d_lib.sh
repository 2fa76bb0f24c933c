# Sourced by the scripts that run a local nvfp4d (demo.sh, bench_checkpoint.sh).
#
# start_nvfp4d BIN_DIR LOG [nvfp4d flags...]: starts nvfp4d on a free loopback port, waits until
# it serves, sets $server (its pid) and $port, and stops it when the script exits.
# stop_nvfp4d: SIGTERM (graceful drain) and wait.
start_nvfp4d() {
  local bin=$1 log=$2
  shift 2
  "$bin/nvfp4d" --listen 127.0.0.1:0 --metrics-listen "" "$@" >"$log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
  port=""
  for _ in $(seq 400); do
    port=$(sed -n 's/^  listen .*(port \([0-9]*\)).*/\1/p' "$log" | head -n 1)
    if [ -n "$port" ] && grep -q "nvfp4d: serving" "$log"; then return 0; fi
    if ! kill -0 "$server" 2>/dev/null; then
      cat "$log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "nvfp4d did not start within 20 s:" >&2
  cat "$log" >&2
  return 1
}

stop_nvfp4d() {
  kill -TERM "$server"
  wait "$server" || true
  trap - EXIT
}
