#!/usr/bin/env bash
# Run N rrr processes on one Redis behind nginx, in the foreground. Ctrl-C (or SIGTERM)
# SIGTERMs every app process (each removes its presence and closes its sockets with 1001,
# which nginx relays to the pages), waits for them, then stops nginx.
#
#   RRR_REDIS_URL=redis://127.0.0.1:6379/0 deploy/run-cluster.sh            # 3 processes, nginx on :8080
#   RRR_PROCESSES=4 RRR_FIRST_PORT=9001 NGINX_LISTEN=0.0.0.0:80 deploy/run-cluster.sh
#
# Settings (environment):
#   RRR_REDIS_URL    required: redis://, rediss://, unix:// or redis+sentinel:// (see deploy/README.md)
#   RRR_PROCESSES    number of app processes (default 3); RRR_FIRST_PORT first port (default 8001)
#   RRR_PORTS        explicit comma list of ports instead (e.g. 8001,8002,8005)
#   NGINX_LISTEN     where nginx listens (default 127.0.0.1:8080)
#   RUN_DIR          logs, nginx.conf, pid and temp files (default ./run)
#   PYTHON           interpreter with the requirements installed (default: the checkout's .venv/bin/python,
#                    which `make run` creates, else python3)
#   NGINX            nginx binary (default: nginx on PATH, else /usr/sbin/nginx)
#   RENDER_ARGS      extra arguments for python -m deploy.render (e.g. "--limit-conn 50")
# Every other RRR_<OPTION> (RRR_PRESENCE_TTL, RRR_PING_INTERVAL, RRR_API_TOKEN, ...) reaches
# the app processes unchanged; --xheaders is always on because nginx is in front.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
: "${RRR_REDIS_URL:?set RRR_REDIS_URL (e.g. redis://127.0.0.1:6379/0)}"
if [[ -z "${PYTHON:-}" && -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; fi
PYTHON="${PYTHON:-python3}"
# Without this, every app process dies at its first import and the script waits out the health check.
if ! "$PYTHON" -c "import tornado, redis" 2>/dev/null; then
    echo "run-cluster: $PYTHON cannot import rrr's requirements (tornado, redis): run 'make run' once" \
        "(it creates .venv), or set PYTHON=<an interpreter with requirements.txt installed>" >&2
    exit 1
fi
NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
NGINX_LISTEN="${NGINX_LISTEN:-127.0.0.1:8080}"
RUN_DIR="$(mkdir -p "${RUN_DIR:-$root/run}" && cd "${RUN_DIR:-$root/run}" && pwd)"
ping_interval="${RRR_PING_INTERVAL:-20}"

if [[ -n "${RRR_PORTS:-}" ]]; then
    IFS=',' read -r -a ports <<< "$RRR_PORTS"
else
    first="${RRR_FIRST_PORT:-8001}"
    ports=()
    for ((i = 0; i < ${RRR_PROCESSES:-3}; i++)); do ports+=("$((first + i))"); done
fi

pids=()
nginx_pid=""
stopping=0
stop_all() {
    ((stopping)) && return
    stopping=1
    echo "run-cluster: stopping" >&2
    # Apps first, while nginx still relays their close frames: every page sees 1001 and
    # reconnects later (with nginx stopped first, pages would only see a dropped connection).
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$nginx_pid" ]]; then
        kill -TERM "$nginx_pid" 2>/dev/null || true
        wait "$nginx_pid" 2>/dev/null || true
    fi
    echo "run-cluster: stopped" >&2
}
trap 'stop_all; exit 0' INT TERM
trap 'stop_all' EXIT

cd "$root"
for port in "${ports[@]}"; do
    "$PYTHON" app.py --address 127.0.0.1 --port "$port" --xheaders >>"$RUN_DIR/app-$port.log" 2>&1 &
    pids+=("$!")
    echo "run-cluster: app.py on 127.0.0.1:$port (pid $!, log $RUN_DIR/app-$port.log)" >&2
done

# Wait until every process answers /healthz (200: Redis reachable).
"$PYTHON" - "${ports[@]}" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 30
for port in sys.argv[1:]:
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"run-cluster: app on port {port} not healthy after 30 s (see its log)")
        time.sleep(0.1)
PY

ports_csv="$(IFS=','; echo "${ports[*]}")"
user_args=()
if [[ "$(id -u)" == 0 ]]; then user_args=(--user root); fi
# shellcheck disable=SC2086 # RENDER_ARGS is a list of words on purpose
"$PYTHON" -m deploy.render --listen "$NGINX_LISTEN" --ports "$ports_csv" --runtime-dir "$RUN_DIR/nginx" \
    --foreground --ping-interval "$ping_interval" "${user_args[@]}" ${RENDER_ARGS:-} -o "$RUN_DIR/nginx/nginx.conf"
"$NGINX" -t -q -c "$RUN_DIR/nginx/nginx.conf" -p "$RUN_DIR/nginx" -e "$RUN_DIR/nginx/logs/error.log"
"$NGINX" -c "$RUN_DIR/nginx/nginx.conf" -p "$RUN_DIR/nginx" -e "$RUN_DIR/nginx/logs/error.log" &
nginx_pid="$!"
echo "run-cluster: nginx on http://$NGINX_LISTEN/ -> ${ports[*]} (config $RUN_DIR/nginx/nginx.conf)" >&2

# Run until a signal, or until any child exits (then stop the rest and fail).
set +e
wait -n "${pids[@]}" "$nginx_pid"
code=$?
set -e
if ((stopping == 0)); then
    echo "run-cluster: a process exited (status $code); stopping the others" >&2
    stop_all
    exit 1
fi
