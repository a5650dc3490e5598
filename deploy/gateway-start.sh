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

# The gateway's own refusals (413, 503) carry the CORS headers the service would send, so that a page
# of an allowed origin (SIMSEARCH_CORS_ORIGINS, the service's setting) can read why: nginx.conf's
# $cors_origin is the caller's Origin when it is one of them, "*" when any is allowed, else empty
# (no header). Checked as strictly as the service checks them: nothing else reaches nginx's config.
set -f   # no filename expansion: "*" is an origin here
{
    echo 'map $http_origin $cors_origin {'
    echo '    default "";'
    for origin in $(printf '%s' "${SIMSEARCH_CORS_ORIGINS:-}" | tr ',' ' '); do
        origin=${origin%/}
        if [ "$origin" = "*" ]; then
            echo '    "~." "*";'
        elif printf '%s' "$origin" | grep -Eq '^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$'; then
            echo "    \"$origin\" \$http_origin;"
        else
            echo "gateway: SIMSEARCH_CORS_ORIGINS: '$origin' is not an origin (scheme://host[:port], or *)" >&2
            exit 1
        fi
    done
    echo '}'
} > /tmp/simsearch-cors.conf
exec /docker-entrypoint.sh "$@"
