#!/usr/bin/env bash
# `make run [UPSTREAM=URL] [ARGS='--ttl 30s ...']`: coalesced in the foreground.
#   scripts/run.sh https://api.example.com --ttl 30s   # in front of your API
#   scripts/run.sh                                      # in front of the demo
#
# With a URL it execs coalesced on it. Without one it first starts the
# bundled demo upstream (tests/upstream: every answer takes 200 ms and every
# call is counted, so coalescing is visible), prints where everything
# listens, runs coalesced in the foreground and, on exit or Ctrl-C, stops the
# demo upstream by its PID. Binaries come from $BUILD (default: build).
# Listens on coalesced's defaults (127.0.0.1:8080, admin 127.0.0.1:9901)
# unless ARGS say otherwise, and refuses to start if those ports are taken:
# coalesced binds with SO_REUSEPORT, so a second instance would otherwise
# silently share the port with the first.
set -euo pipefail
cd "$(dirname "$0")/.."

build=${BUILD:-build}
coalesced=$build/daemon/coalesced
testupstream=$build/tests/upstream/testupstream
delay_ms=${DEMO_DELAY_MS:-200}

die() {
  echo "run: $*" >&2
  exit 1
}

url=
if (($# > 0)); then
  case $1 in
  "") shift ;;
  http://* | https://*)
    url=$1
    shift
    ;;
  -*) ;; # no URL: everything is for coalesced
  *) die "'$1' is not an http:// or https:// URL (usage: scripts/run.sh [URL] [coalesced args...])" ;;
  esac
fi
args=("$@")

[[ -x $coalesced ]] || die "$coalesced not found: run 'make build' first (or set BUILD=dir)"

# Where coalesced will listen: its defaults unless the extra args say
# otherwise. An upstream or config given in ARGS means no demo upstream.
listen=127.0.0.1:8080
admin=127.0.0.1:9901
own_upstream=
for ((i = 0; i < ${#args[@]}; i++)); do
  a=${args[i]}
  next=${args[i + 1]:-}
  case $a in
  -l | --listen) listen=$next ;;
  --listen=*) listen=${a#*=} ;;
  --admin-listen) admin=$next ;;
  --admin-listen=*) admin=${a#*=} ;;
  -u | --upstream | --upstream=* | -c | --config | --config=*) own_upstream=1 ;;
  esac
done

# Refuses an address someone already listens on (a connect succeeds).
check_free() { # what, host:port
  local host=${2%:*} port=${2##*:}
  host=${host#[}
  host=${host%]}
  [[ $port == 0 ]] && return 0
  if timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
    die "$1 address $2 is already in use (another coalesced? see: ss -ltnp 'sport = :$port').
     Stop it, or pick other ports: make run ARGS='--listen 127.0.0.1:8081 --admin-listen 127.0.0.1:9902'"
  fi
}
check_free proxy "$listen"
check_free admin "$admin"

if [[ -n $url ]]; then
  exec "$coalesced" --upstream "$url" "${args[@]}"
fi
if [[ -n $own_upstream ]]; then
  exec "$coalesced" "${args[@]}"
fi

# ---- no URL: the demo upstream ----------------------------------------------
[[ -x $testupstream ]] || die "$testupstream not found: run 'make build' first"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/coalesce-run.XXXXXX")
up_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [[ -n $up_pid ]] && kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$testupstream" --port 0 --port-file "$tmp/port" --delay-ms "$delay_ms" --quiet \
  >"$tmp/upstream.log" 2>&1 &
up_pid=$!
for _ in $(seq 100); do
  [[ -s $tmp/port ]] && break
  kill -0 "$up_pid" 2>/dev/null || die "demo upstream failed: $(cat "$tmp/upstream.log")"
  sleep 0.05
done
[[ -s $tmp/port ]] || die "demo upstream did not start within 5 s"
up="http://127.0.0.1:$(cat "$tmp/port")"

cat <<EOF

  coalesced in front of the demo upstream $up
  (every upstream answer takes ${delay_ms} ms and every call is counted)

  proxy   http://$listen
  admin   http://$admin

  Try:
    curl -si http://$listen/v1/price?sym=ABC            # X-Cache: MISS, then HIT
    seq 50 | xargs -P50 -I{} curl -s -o /dev/null -D - http://$listen/herd | grep -i x-cache | sort | uniq -c
    curl -s http://$admin/api/v1/shared/deduplication/stats    # what was saved
    curl -s $up/__upstream/stats?paths=0                # calls the upstream really got
  Or: make demo (a scripted herd with the figures).

  Ctrl-C to stop (the demo upstream stops with it).

EOF

# Foreground, not exec: the EXIT trap must still stop the upstream. On
# Ctrl-C coalesced drains and exits 0; the script then ends normally.
rc=0
"$coalesced" --upstream "$up" "${args[@]}" || rc=$?
exit "$rc"
