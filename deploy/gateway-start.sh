#!/bin/sh
# How the gateway container starts (docker-compose.yml): it writes nginx.conf's `resolver`, the
# container's own DNS server, then runs the nginx image's own entrypoint with the command.
# The engine's DNS server is the first nameserver in /etc/resolv.conf (Docker's 127.0.0.11, Podman's
# aardvark-dns); the ones after it, the host's, answer "not found" for the service's name, and nginx
# asks its resolvers in turn, so listing them all made every other lookup fail.
set -eu
ns=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)
if [ -z "$ns" ]; then
    echo "gateway: no nameserver in /etc/resolv.conf; nginx cannot look the service up" >&2
    exit 1
fi
case "$ns" in *:*) ns="[$ns]" ;; esac
printf 'resolver %s valid=10s ipv6=off;\nresolver_timeout 5s;\n' "$ns" > /tmp/simsearch-resolver.conf
exec /docker-entrypoint.sh "$@"
