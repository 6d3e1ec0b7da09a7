# Helpers shared by the tests: start and stop real nbdkit servers on
# unix sockets in a private directory, and clean up on exit.
#
# Every server this file starts is stopped by its own pid file; no
# other process is touched.

set -euo pipefail

: "${FILTER:?FILTER must name nbdkit-relocate-filter.so}"
: "${RELOCATECTL:?RELOCATECTL must name relocatectl}"
: "${srcdir:=$(dirname "$0")/..}"
PY=/usr/bin/python3             # has the nbd module (python3-libnbd)
NBDIO="$PY $srcdir/tests/nbdio.py"

tmp=$(mktemp -d /tmp/relocate-test.XXXXXX)
servers=()
clients=()      # background client pids (add with clients+=($!)), killed on exit

# With a sanitizer build (scripts/check --sanitize=...), the runtime is
# preloaded into nbdkit, which loads the instrumented filter.
# NBDKIT is a command (an array) for places that exec it directly.
if [ -n "${SANITIZER_PRELOAD:-}" ]; then
    nbdkit () { LD_PRELOAD=$SANITIZER_PRELOAD command nbdkit "$@"; }
    NBDKIT=(env "LD_PRELOAD=$SANITIZER_PRELOAD" nbdkit)
else
    NBDKIT=(nbdkit)
fi
# NBDKIT as shell words (quoted), for the scripts that tests write.
nbdkit_words () { printf '%q ' "${NBDKIT[@]}"; }

# hook_pids FILE: the pids in a pids.json the libvirt hook wrote
# (nbdkit and its keeper).
hook_pids () { $PY -c 'import json, sys; print(*json.load(open(sys.argv[1])).values())' "$1"; }

# stop_hook_servers: what the libvirt hook started under $tmp, killed
# by pid if its command line names $tmp: a hook test that fails
# half-way leaves nothing running.
stop_hook_servers ()
{
    local f p
    while read -r f; do
        for p in $(hook_pids "$f" 2>/dev/null); do
            if running "$p" "$tmp"; then
                kill -KILL "$p" 2>/dev/null || :
            fi
        done
    done < <(find "$tmp" -name pids.json 2>/dev/null)
}

cleanup ()
{
    local status=$?
    local i
    for i in "${clients[@]}"; do
        kill "$i" 2>/dev/null || :
    done
    stop_hook_servers
    # Newest first: a relocation holds a connection to its source.
    for (( i=${#servers[@]}-1; i>=0; i-- )); do
        stop_server "${servers[i]}" || :
    done
    if [ "$status" -ne 0 ]; then
        for log in "$tmp"/*.log; do
            [ -f "$log" ] || continue
            echo "---- $log (last 30 lines)"
            tail -n 30 "$log"
        done
    fi
    [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' INT TERM        # a test that is stopped has not passed

fail () { echo "FAIL: $*" >&2; exit 1; }
pass () { echo "ok: $*"; }

# wait_for CMD...: retry a command for up to 30 seconds.
wait_for ()
{
    local i
    for i in $(seq 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

# start_server NAME ARGS...: nbdkit on $tmp/NAME.sock, logging to
# $tmp/NAME.log, pid in $tmp/NAME.pid.
start_server ()
{
    local name=$1; shift
    rm -f "$tmp/$name.sock" "$tmp/$name.pid"
    # Foreground (-f) in a background job: a daemonized nbdkit sends
    # its messages to /dev/null.
    nbdkit -f --log=stderr -U "$tmp/$name.sock" -P "$tmp/$name.pid" "$@" \
        2>>"$tmp/$name.log" </dev/null &
    disown    # stopped by pid file below; no job-control noise
    wait_for test -s "$tmp/$name.pid" ||
        fail "nbdkit $name did not start: $(tail -n 5 "$tmp/$name.log")"
    servers+=("$name")
    # Ready means accepting connections: the socket file exists a moment
    # before nbdkit listens on it (ECONNREFUSED on a loaded machine).
    local pid i
    pid=$(cat "$tmp/$name.pid")
    for i in $(seq 300); do
        nbdinfo --can connect "$(uri "$name")" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null ||
            fail "nbdkit $name exited: $(tail -n 5 "$tmp/$name.log")"
        sleep 0.1
    done
    fail "nbdkit $name does not accept connections: $(tail -n 5 "$tmp/$name.log")"
}

# start_source NAME IMAGE [ARGS...]: serve IMAGE with nbdkit file
# (extra filters and parameters in ARGS, e.g. --filter=delay rdelay=5ms).
start_source ()
{
    local name=$1 img=$2; shift 2
    local filters=() params=()
    for a in "$@"; do
        case $a in --filter=*) filters+=("$a") ;; *) params+=("$a") ;; esac
    done
    start_server "$name" "${filters[@]}" file "$img" "${params[@]}"
}

# start_dest NAME SOURCE LOCAL [PARAMS...]: the relocate filter in
# front of source NAME's socket, control socket $tmp/NAME.ctl.
start_dest ()
{
    local name=$1 source=$2 file=$3; shift 3
    rm -f "$tmp/$name.ctl"
    start_server "$name" --filter="$FILTER" nbd socket="$tmp/$source.sock" \
        relocate-file="$file" relocate-control="$tmp/$name.ctl" "$@"
    wait_for test -S "$tmp/$name.ctl" || fail "$name: no control socket"
}

# start_dest_or_plain NAME SOURCE LOCAL PLAIN [PARAMS...]: start_dest,
# or with PLAIN non-empty a plain nbdkit file over LOCAL (a copy of the
# source's image, $tmp/SOURCE.img): the control for a test's claims.
start_dest_or_plain ()
{
    local name=$1 source=$2 file=$3 plain=$4; shift 4
    if [ -n "$plain" ]; then
        [ -f "$file" ] || cp "$tmp/$source.img" "$file"
        start_server "$name" file "$file"
    else
        start_dest "$name" "$source" "$file" "$@"
    fi
}

# stop_server NAME [SIGNAL]: stop it and wait until it has exited
# (escalating to SIGKILL after 10 seconds).
stop_server ()
{
    local name=$1 sig=${2:-TERM} pid i
    [ -s "$tmp/$name.pid" ] || return 0
    pid=$(cat "$tmp/$name.pid")
    kill -s "$sig" "$pid" 2>/dev/null || :
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "warning: $name (pid $pid) ignored SIG$sig; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || :
        sleep 0.5
    fi
    rm -f "$tmp/$name.pid"
}

# since T0: seconds (one decimal) since T0, a `date +%s.%N`.
since () { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# stop_within PID SECONDS: SIGTERM, and wait up to SECONDS for it to
# exit.  Prints how long it took; if it did not exit in time, kills it
# (SIGKILL) and returns 1.
stop_within ()
{
    local pid=$1 limit=$2 t0 i
    t0=$(date +%s.%N)
    kill -TERM "$pid" 2>/dev/null || :
    for i in $(seq $((limit * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || :
        since "$t0"
        return 1
    fi
    since "$t0"
}

uri () { echo "nbd+unix:///?socket=$tmp/$1.sock"; }

# free_port: a TCP port on 127.0.0.1 that is free now.
free_port () { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_tcp_source NAME IMAGE PORT: nbdkit file serving IMAGE on
# 127.0.0.1:PORT (an old host's export, as the libvirt hook sees one),
# pid in $tmp/NAME.pid, stopped on exit; returns once it serves.
start_tcp_source ()
{
    local name=$1 img=$2 port=$3
    rm -f "$tmp/$name.pid"
    nbdkit -f -i 127.0.0.1 -p "$port" -P "$tmp/$name.pid" file "$img" \
        2>>"$tmp/$name.log" </dev/null &
    disown
    wait_for test -s "$tmp/$name.pid" || fail "source $name did not start"
    servers+=("$name")
    wait_for nbdinfo --can connect "nbd://127.0.0.1:$port" ||
        fail "source $name does not serve on port $port"
}
ctl () { "$RELOCATECTL" "$1" "$tmp/$2.ctl" "${@:3}"; }

# status_field NAME KEY: one field of relocatectl status --json.
status_field ()
{
    "$RELOCATECTL" status --json "$tmp/$1.ctl" |
        $PY -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(str(v).lower() if isinstance(v,bool) else v)' "$2"
}

sha () { sha256sum "$1" | cut -d' ' -f1; }

# random_image FILE SIZE_MIB
random_image () { head -c "$(( $2 * 1024 * 1024 ))" /dev/urandom > "$1"; }

# field_at_least NAME KEY N: status field KEY is at least N (for wait_for).
field_at_least () { [ "$(status_field "$1" "$2")" -ge "$3" ]; }

# field_is NAME KEY VALUE: status field KEY equals VALUE (for wait_for).
field_is () { [ "$(status_field "$1" "$2")" = "$3" ]; }

# client_field DIR KEY: one field of tests/reconnect.py's DIR/progress.
client_field ()
{
    $PY -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(str(v).lower() if isinstance(v,bool) else v)' \
        "$1/progress" "$2"
}

# client_busy DIR GEN N: the reconnect client has connected GEN times
# and each of its connections has had N requests acknowledged since
# (for wait_for).
client_busy ()
{
    $PY -c 'import json,sys; p=json.load(open(sys.argv[1]))
sys.exit(not (p["connected"] and p["generation"] >= int(sys.argv[2])
              and p["acked_this_generation"] >= int(sys.argv[3])))' "$1/progress" "$2" "$3"
}

# use_shim FILE.c: build tests/FILE.c (an LD_PRELOAD shim); from now
# on, while the array shim_vars is not empty, the nbdkit that
# start_server runs (and only it) gets the shim, after the sanitizer
# runtime (which must come first), and shim_vars in its environment.
use_shim ()
{
    cc -shared -fPIC -O2 -o "$tmp/shim.so" "$srcdir/tests/$1" \
        -ldl -lpthread || fail "cannot build the shim $1"
    shim_vars=()
    nbdkit ()
    {
        local pre=${SANITIZER_PRELOAD:-}
        [ ${#shim_vars[@]} -eq 0 ] || pre="${pre:+$pre }$tmp/shim.so"
        env ${pre:+"LD_PRELOAD=$pre"} "${shim_vars[@]}" nbdkit "$@"
    }
}

# use_powercut_shim: use_shim tests/powercut-shim.c, with none of its
# variables inherited.
use_powercut_shim ()
{
    unset POWERCUT_DIR POWERCUT_LOG POWERCUT_BOOT_ID
    use_shim powercut-shim.c
}

# running PID [MARKER]: alive, not a zombie (a keeper whose parent has
# exited is reaped by init, which in a container may never do it), and
# (if given) MARKER in its command line (a reused pid is never
# signalled).  /proc is read once: a process may go between two reads.
running ()
{
    local st cmd
    st=$(cat "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] || return 1
    st=${st##*) }
    [ "${st:0:1}" != Z ] || return 1
    [ -z "${2:-}" ] && return 0
    cmd=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *"$2"* ]]
}
stopped () { ! running "$1"; }

# make_ca DIR NAME: a certificate authority for tests (certtool, from
# gnutls-bin): DIR/ca-key.pem and DIR/ca-cert.pem.
make_ca ()
{
    local d=$1
    mkdir -p "$d"
    printf 'cn = "%s"\nca\ncert_signing_key\nexpiration_days = 30\n' "$2" > "$d/ca.tmpl"
    certtool --generate-privkey --key-type=ecdsa --outfile "$d/ca-key.pem" 2>/dev/null &&
    certtool --generate-self-signed --load-privkey "$d/ca-key.pem" \
        --template "$d/ca.tmpl" --outfile "$d/ca-cert.pem" 2>/dev/null ||
        fail "certtool: cannot make the CA $2"
}

# make_certs CADIR DIR: a directory of certificates as nbdkit, libnbd
# and QEMU (libvirt's /etc/pki/qemu) read them: ca-cert.pem, and a
# server and a client certificate signed by CADIR's CA, for localhost,
# 127.0.0.1 and the relocate-* host names of the tests.
make_certs ()
{
    local ca=$1 d=$2 kind
    mkdir -p "$d"
    cp "$ca/ca-cert.pem" "$d/"
    for kind in server client; do
        { echo "cn = \"relocate test $kind\""
          if [ $kind = server ]; then
              for n in localhost relocate-oldhost relocate-hosta relocate-hostb relocate-hostc; do
                  echo "dns_name = \"$n\""
              done
              echo 'ip_address = "127.0.0.1"'
              echo tls_www_server
          else
              echo tls_www_client
          fi
          printf 'signing_key\nencryption_key\nexpiration_days = 30\n'; } > "$d/$kind.tmpl"
        certtool --generate-privkey --key-type=ecdsa --outfile "$d/$kind-key.pem" 2>/dev/null &&
        certtool --generate-certificate --load-privkey "$d/$kind-key.pem" \
            --load-ca-certificate "$ca/ca-cert.pem" --load-ca-privkey "$ca/ca-key.pem" \
            --template "$d/$kind.tmpl" --outfile "$d/$kind-cert.pem" 2>/dev/null ||
            fail "certtool: cannot make the $kind certificate in $d"
        rm -f "$d/$kind.tmpl"
    done
}

# start_relay NAME UPSTREAM [ARGS...]: tests/relay.py on 127.0.0.1 in
# front of UPSTREAM (unix:PATH or tcp:HOST:PORT), its port in
# $tmp/NAME.port, pid in $tmp/NAME.pid (stopped on exit); kill -USR1
# makes the source vanish silently, -USR2 brings it back.
start_relay ()
{
    local name=$1 up=$2; shift 2
    rm -f "$tmp/$name.port"
    $PY "$srcdir/tests/relay.py" --upstream "$up" --port-file "$tmp/$name.port" "$@" \
        2>>"$tmp/$name.log" </dev/null &
    echo $! > "$tmp/$name.pid"
    disown
    servers+=("$name")
    wait_for test -s "$tmp/$name.port" || fail "relay $name did not start: $(tail -n 5 "$tmp/$name.log")"
}

# bad_range_map FILE SIZE BAD LEN: a ddrescue mapfile for nbdkit's
# ddrescue filter over an image of SIZE bytes: every byte readable but
# [BAD, BAD+LEN), which fails with EIO.
bad_range_map ()
{
    local f=$1 size=$2 bad=$3 len=$4
    printf '%s\n' '# Mapfile. Created by GNU ddrescue version 1.25' \
        '# current_pos  current_status  current_pass' \
        '0x00000000     ?               1' \
        '#      pos        size  status' \
        "$(printf '0x%08x  0x%08x  +' 0 "$bad")" \
        "$(printf '0x%08x  0x%08x  -' "$bad" "$len")" \
        "$(printf '0x%08x  0x%08x  +' $((bad + len)) $((size - bad - len)))" > "$f"
}
