#!/usr/bin/env bash
# A Docker engine for the compose test on a machine that has none (CI): Debian's engine started by hand, Compose v2
# as a CLI plugin (bookworm's docker-compose is v1, which rejects the compose file's top-level `name`).
#   engine.sh provision   install what is missing (idempotent; seconds when everything is there)
#   engine.sh start       start dockerd in the background and wait for it
#   engine.sh stop        stop the dockerd that `start` started and remove its bridge
# Source this file's settings with `. engine.sh env` to talk to that engine.
set -euo pipefail

STATE=${FT_COMPOSE_STATE:-/var/tmp/finetune-compose}
PLUGINS=/usr/local/lib/docker/cli-plugins
export DOCKER_HOST=unix://$STATE/docker.sock

provision() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v iptables >/dev/null || missing+=(iptables)
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ! docker compose version >/dev/null 2>&1; then
        # Compose v2 from Debian trixie's package, read through a private apt state: the host's sources stay as
        # they are. The plugin is one static binary.
        local apt=$STATE/apt
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
        echo "deb http://deb.debian.org/debian trixie main" >"$apt/sources.list"
        local options=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
        apt-get "${options[@]}" update -qq
        (cd "$apt/deb" && apt-get "${options[@]}" download docker-compose)
        dpkg -x "$apt"/deb/docker-compose_*.deb "$apt/root"
        mkdir -p "$PLUGINS"
        install -m 0755 "$apt/root/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGINS/docker-compose"
        rm -rf "$apt"
        docker compose version
    fi
}

start() {
    mkdir -p "$STATE"
    if [[ -S $STATE/docker.sock ]] && docker info >/dev/null 2>&1; then
        return
    fi
    # Its own socket, pid file and bridge name: nothing else on this machine is touched. The data root is the
    # default one, so the base images stay cached between runs.
    dockerd --host "$DOCKER_HOST" --pidfile "$STATE/dockerd.pid" --exec-root "$STATE/exec" \
        --storage-driver overlay2 >"$STATE/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    echo "dockerd did not start; its log:" >&2
    tail -n 40 "$STATE/dockerd.log" >&2
    return 1
}

stop() {
    if [[ -f $STATE/dockerd.pid ]]; then
        local pid
        pid=$(cat "$STATE/dockerd.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
    fi
    ip link delete docker0 2>/dev/null || true
}

case ${1:-} in
provision | start | stop) "$1" ;;
env) ;;
*)
    echo "usage: $0 provision|start|stop" >&2
    exit 2
    ;;
esac
