#!/bin/sh
# smoke.sh BINARY — smoke test of testupstream: starts it on an ephemeral
# port of 127.0.0.1, checks counting, status, a delayed answer (counted while
# still in flight), header echo, the control API and injected failures with
# curl, then stops it with SIGTERM and expects exit status 0.
# Exits non-zero on the first failure. Needs curl.
set -u

BIN=${1:?usage: smoke.sh BINARY}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/testupstream-smoke.XXXXXX")
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  [ -s "$TMP/err" ] && sed 's/^/  upstream: /' "$TMP/err" >&2
  exit 1
}
ok() { echo "ok: $*"; }

"$BIN" --port 0 --port-file "$TMP/port" --quiet >"$TMP/out" 2>"$TMP/err" &
PID=$!
i=0
while [ ! -s "$TMP/port" ]; do
  i=$((i + 1))
  [ $i -gt 100 ] && fail "no port file after 10 s"
  kill -0 "$PID" 2>/dev/null || fail "testupstream exited at start"
  sleep 0.1
done
PORT=$(cat "$TMP/port")
U="http://127.0.0.1:$PORT"
grep -q "^testupstream listening on 127.0.0.1:$PORT\$" "$TMP/out" ||
  fail "ready line missing: $(cat "$TMP/out")"
ok "listening on port $PORT"

C="curl -sS --max-time 10"

# get URL [curl args...]: body on stdout
get() { u=$1; shift; $C "$@" "$U$u"; }
# code URL [curl args...]: HTTP status on stdout
code() { u=$1; shift; $C -o /dev/null -w '%{http_code}' "$@" "$U$u"; }
expect() { # expect WHAT HAYSTACK NEEDLE
  case "$2" in *"$3"*) ok "$1" ;; *) fail "$1: '$3' not in: $2" ;; esac
}

# Counting: identical requests are separate calls with different bodies.
b1=$(get "/x?a=1") || fail "GET /x?a=1"
b2=$(get "/x?a=1") || fail "GET /x?a=1 again"
expect "first call" "$b1" '"path":"/x","query":"a=1","method":"GET","seq":1,"path_seq":1'
expect "second call" "$b2" '"seq":2,"path_seq":2'
s=$(get /__upstream/stats)
expect "stats count" "$s" '"total":2,'
expect "stats per path" "$s" '"/x?a=1":2'

# Status.
[ "$(code '/s?status=503&retry_after=3')" = 503 ] || fail "status=503"
h=$($C -D - -o /dev/null "$U/s?status=429&retry_after=7")
expect "retry-after" "$h" "Retry-After: 7"

# Delay: answered late, and counted (in flight) while still waiting.
$C -o "$TMP/late" -w '%{time_total}' "$U/slow?delay_ms=1500" >"$TMP/late_t" &
CPID=$!
i=0
while :; do
  s=$(get "/__upstream/stats?paths=0")
  case "$s" in *'"inflight":1,'*) break ;; esac
  i=$((i + 1))
  [ $i -gt 50 ] && fail "delayed request never counted in flight: $s"
  sleep 0.02
done
[ -s "$TMP/late" ] && fail "delayed answer arrived before the delay"
ok "delayed request counted while in flight"
wait $CPID || fail "delayed request failed"
expect "delayed answer" "$(cat "$TMP/late")" '"path":"/slow"'
t=$(cut -d. -f1 "$TMP/late_t")
[ "$t" -ge 1 ] || fail "delayed answer took $(cat "$TMP/late_t") s, < 1.5 s"
ok "delayed answer after the delay"
expect "inflight back to 0" "$(get /__upstream/stats)" '"inflight":0,'

# Echo of request headers.
b=$(get "/echo?echo=1" -H "X-Api-Key: secret42")
expect "echo" "$b" '"x-api-key":"secret42"'

# Control API: reset, config defaults, request parameters win, clear.
get /__upstream/reset -X POST >/dev/null
expect "reset" "$(get /__upstream/stats)" '"total":0,'
get "/__upstream/config?status=500&cc=no-store" -X POST >/dev/null
[ "$(code /cfg)" = 500 ] || fail "config default status"
[ "$(code '/cfg?status=200')" = 200 ] || fail "request parameter over config"
h=$($C -D - -o /dev/null "$U/cfg")
expect "config default header" "$h" "Cache-Control: no-store"
get /__upstream/config -X POST >/dev/null
[ "$(code /cfg)" = 200 ] || fail "config clear"
[ "$(code '/__upstream/config?fail=nonsense' -X POST)" = 400 ] ||
  fail "bad config accepted"
expect "control not counted" "$(get /__upstream/stats)" '"total":4,'

# Failures: the client sees a transport error, the call is still counted.
$C -o /dev/null "$U/f?fail=reset" 2>/dev/null
rc=$?
[ $rc -ne 0 ] || fail "fail=reset gave curl no error"
ok "fail=reset -> curl exit $rc"
$C -o /dev/null "$U/f?fail=close" 2>/dev/null && fail "fail=close answered"
ok "fail=close"
$C -o /dev/null "$U/f?fail=truncate" 2>/dev/null && fail "fail=truncate ok"
ok "fail=truncate"
expect "failures counted" "$(get /__upstream/stats)" '"total":7,'

# Batch.
b=$(get "/batch/items?ids=1,2,3&missing=2")
[ "$b" = '{"data":[{"id":"1","name":"item-1"},{"id":"3","name":"item-3"}]}' ] ||
  fail "batch: $b"
ok "batch"

# Clean exit on SIGTERM.
kill -TERM "$PID"
wait "$PID"
rc=$?
PID=
[ $rc -eq 0 ] || fail "exit status $rc after SIGTERM"
ok "SIGTERM -> exit 0"
echo "PASS"
