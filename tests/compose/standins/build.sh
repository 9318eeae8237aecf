#!/usr/bin/env bash
# Builds the stand-ins listed in `images` on the engine DOCKER_HOST names, tagged as the images they stand in for.
# The Debian base comes from debootstrap (about 100 s), with this host's locally added CA certificates: HTTPS from
# containers passes a proxy that presents its own. Each image is rebuilt only when its folder changed (a label
# holds a hash of it), so on a machine that ran this before it takes seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BASE=finetune-standin-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

certificates_hash() {
    cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16
}

build_base() {
    local want current
    want=$(certificates_hash)
    current=$(docker image inspect -f '{{index .Config.Labels "finetune.certificates"}}' "$BASE" 2>/dev/null || true)
    [[ $current == "$want" ]] && return
    echo "stand-ins: debootstrap bookworm (about 100 s)"
    local root
    root=$(mktemp -d /var/tmp/finetune-standin-root.XXXXXX)
    trap 'rm -rf "$root"' RETURN
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$MIRROR" >/dev/null
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    fi
    chroot "$root" update-ca-certificates >/dev/null
    # pip uses its own bundle unless told: point it at the system's, which now holds the proxy's certificate.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["bash"]' \
        -c "LABEL finetune.certificates=$want" - "$BASE" >/dev/null
}

build_standin() {
    local image=$1 folder=$here/$2 want current
    want=$( (docker image inspect -f '{{.Id}}' "$BASE" && tar -C "$folder" -c --sort=name --mtime=@0 .) | sha256sum | cut -c1-16)
    current=$(docker image inspect -f '{{index .Config.Labels "finetune.standin"}}' "$image" 2>/dev/null || true)
    [[ $current == "$want" ]] && return
    echo "stand-ins: $image from $2/"
    DOCKER_BUILDKIT=0 docker build -q --label "finetune.standin=$want" -t "$image" "$folder" 2> >(
        grep -v -e '^DEPRECATED: The legacy builder' -e '^ *BuildKit is currently disabled' -e '^ *environment-variable\.' \
            -e '^$' >&2 || true) >/dev/null
}

build_base
while read -r image folder; do
    [[ -z $image || $image == \#* ]] && continue
    build_standin "$image" "$folder"
done <"$here/images"
