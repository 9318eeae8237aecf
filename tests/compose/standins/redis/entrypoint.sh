#!/bin/sh
# As the official image: the server runs as the redis user and owns its data folder; other commands run as given.
set -eu
if [ "$1" = redis-server ]; then
    chown -R redis:redis /data
    exec runuser -u redis -- "$@" --protected-mode no --dir /data
fi
exec "$@"
