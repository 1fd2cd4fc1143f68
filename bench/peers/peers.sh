# bench/peers/peers.sh — the benchmark's peers of coalesced: nginx, Varnish
# and the static-nginx ceiling, as start_<peer> / stop_<peer> /
# version_<peer> functions. Sourced by bench/run.sh, which provides
# $upstream (the test upstream's base URL), $peer_base (a private directory,
# on tmpfs when it can be), the pids array its EXIT trap empties, stop_pid,
# say and die.
#
# Invariants: a peer runs only as a foreground child of the script
# (`daemon off` / `varnishd -F`), listening on a 127.0.0.1 port picked for
# it, with its configuration, logs, cache and work files in its own fresh
# directory under $peer_base; the distro's services are never used. The
# process the script started is in pids (the EXIT trap stops it); its
# children (nginx workers, Varnish's cache process) are in peer_pids so
# that RSS is summed over them and stop_<peer> makes sure they are gone
# too, by PID, after their parent has been told to stop.
# shellcheck shell=bash disable=SC2034,SC2153,SC2154
peers_src=$root/bench/peers

# A free TCP port on 127.0.0.1: bound to port 0 and released. The peer binds
# it a moment later (nginx and varnishd do not report a port-0 choice).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() { # pid: running (a zombie or a missing process is not)
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]]
}

children_of() { # pid: its direct children's PIDs, space separated
  local c
  read -r -a c <<<"$(cat /proc/"$1"/task/*/children 2>/dev/null | tr '\n' ' ')"
  echo "${c[*]}"
}

# Waits until the peer answers HTTP at all (any status): nginx is up when
# its port accepts, but varnishd's manager opens the port before its cache
# process can answer. The readiness request reaches the upstream at most
# once per instance; every scenario resets the upstream's counters after.
wait_http() { # port pid name [path]
  local code
  for _ in $(seq 400); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
      "http://127.0.0.1:$1${4:-/__bench/ready?delay_ms=0}" 2>/dev/null) || true
    [[ $code != 000 && -n $code ]] && return 0
    alive "$2" || die "$3 exited: $(tail -5 "$peer_dir/stderr" 2>/dev/null)"
    sleep 0.025
  done
  die "$3 did not answer within 10 s: $(tail -5 "$peer_dir/stderr" 2>/dev/null)"
}

# Stops a peer: the started process first (nginx's master, varnishd's
# manager stop their children on TERM), then any child still running.
stop_tree() { # "pid children..."
  local p first=${1%% *} rest=${1#* }
  stop_pid "$first"
  [[ $rest == "$1" ]] && return 0
  for p in $rest; do
    for _ in $(seq 100); do
      alive "$p" || break
      sleep 0.05
    done
    if alive "$p"; then
      say "bench: $p still running after its parent stopped: KILL"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

# A fresh directory for one instance. Readable by all: run as root, nginx's
# workers drop to www-data and Varnish's cache process to varnish.
new_peer_dir() { # name: sets peer_dir
  peer_dir=$(mktemp -d "$peer_base/$1.XXXXXX")
  chmod 755 "$peer_dir"
}

upstream_hostport() { local u=${upstream#http://}; echo "${u%%/*}"; }

# ---- nginx ------------------------------------------------------------------------
nginx_run() { # template name [sed expressions...]: starts an nginx from template
  local template=$1 name=$2
  shift 2
  new_peer_dir "$name"
  local port
  port=$(free_port)
  sed -e "s|@DIR@|$peer_dir|g" -e "s|@PORT@|$port|g" "$@" \
    "$peers_src/$template" >"$peer_dir/nginx.conf"
  nginx -p "$peer_dir" -c "$peer_dir/nginx.conf" -t >"$peer_dir/test.log" 2>&1 ||
    die "nginx rejects $template: $(tail -3 "$peer_dir/test.log")"
  nginx -p "$peer_dir" -c "$peer_dir/nginx.conf" -g 'daemon off;' \
    >"$peer_dir/stdout" 2>"$peer_dir/stderr" &
  local pid=$!
  pids+=("$pid")
  wait_http "$port" "$pid" "nginx ($template)" "${nginx_ready_path:-}"
  # the workers have forked by the time one answered
  peer_port=$port
  peer_pids="$pid $(children_of "$pid")"
  peer_admin=$peer_dir
}

start_nginx() { # profile (every profile is the same configuration)
  nginx_run nginx.conf.in "nginx-$1" -e "s|@UPSTREAM@|$(upstream_hostport)|g"
}
stop_nginx() { stop_tree "${PIDS[nginx/$1]}"; }
version_nginx() { nginx -v 2>&1 | sed 's|.*nginx/|nginx |'; }

# The ceiling: a fixed 1 KiB answer from nginx itself (scenario g, 1 KiB).
static_body() { # size: a JSON body of exactly size bytes
  python3 -c 'import sys; n = int(sys.argv[1]); h = "{\"static\":true,\"pad\":\""; print(h + "x" * (n - len(h) - 2) + "\"}", end="")' "$1"
}
start_nginx_static() { # profile
  nginx_ready_path=/ nginx_run nginx-static.conf.in "nginx-static-$1" \
    -e "s|@BODY@|$(static_body 1024)|g"
}
stop_nginx_static() { stop_tree "${PIDS[nginx_static/$1]}"; }

# ---- Varnish ----------------------------------------------------------------------
start_varnish() { # profile
  new_peer_dir "varnish-$1"
  local hp port
  hp=$(upstream_hostport)
  port=$(free_port)
  sed -e "s|@HOST@|${hp%:*}|g" -e "s|@PORT@|${hp##*:}|g" \
    "$peers_src/default.vcl.in" >"$peer_dir/default.vcl"
  # -F: foreground, a child of this script; -T none: no management port;
  # -n: its own work directory (shared memory log, compiled VCL); the
  # default jail drops the cache process to the varnish user.
  varnishd -F -a "127.0.0.1:$port" -T none -f "$peer_dir/default.vcl" \
    -n "$peer_dir/varnish" -s malloc,256m \
    >"$peer_dir/stdout" 2>"$peer_dir/stderr" &
  local pid=$!
  pids+=("$pid")
  wait_http "$port" "$pid" varnishd
  peer_port=$port
  peer_pids="$pid $(children_of "$pid")"
  peer_admin=$peer_dir
}
stop_varnish() { stop_tree "${PIDS[varnish/$1]}"; }
version_varnish() { varnishd -V 2>&1 | sed -n '1s/.*(varnish-\([^ ]*\).*/varnish \1/p'; }

# Memory nginx holds outside its processes: its cache files (tmpfs pages).
files_kib_nginx() { # profile
  du -sk "${ADMIN[nginx/$1]}/cache" 2>/dev/null | awk '{print $1}' || echo 0
}
