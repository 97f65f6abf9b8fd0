#!/usr/bin/env bash
# Stops the control plane that start.sh started in DIR and removes its state.
#
#   tests/kube/stop.sh [--keep-logs] DIR
#
# Kills kube-apiserver, then etcd (TERM, then KILL after 10 s), by the pids
# recorded in DIR; then deletes DIR's generated files. With --keep-logs the
# *.log files are kept (and DIR with them). Safe to run twice.
set -euo pipefail

keep_logs=0
if [ "${1:-}" = --keep-logs ]; then keep_logs=1; shift; fi
[ $# -eq 1 ] || { printf 'usage: %s [--keep-logs] DIR\n' "$0" >&2; exit 2; }
DIR="$1"
[ -d "$DIR" ] || exit 0

# Each server was started as `setsid timeout ... SERVER`: the pid is that of
# `timeout`, which leads its own process group; signal the whole group.
stop_one() {
  local pidfile="$DIR/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop_one kube-apiserver
stop_one etcd

rm -rf "$DIR/etcd" "$DIR/pki" "$DIR/token.csv" "$DIR/kubeconfig" "$DIR/env.sh"
if [ "$keep_logs" = 0 ]; then
  rm -f "$DIR/etcd.log" "$DIR/kube-apiserver.log"
  rmdir "$DIR" 2>/dev/null || true
fi
