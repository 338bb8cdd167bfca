#!/bin/sh
# The nats container's entrypoint in docker-compose.yml: nats-server, unless a
# user's password is unset or still the public demo default (demo-only-*) and
# MAILBUS_DEMO=1 does not say this is a demo on one's own machine. Those
# defaults are in the repository for anyone to read: a bus reachable with them
# is open to anyone who can reach it.
set -eu
if [ "${MAILBUS_DEMO:-}" != "1" ]; then
  for name in MAILBUS_ADMIN_NATS_PASSWORD MAILBUS_INGRESS_NATS_PASSWORD \
      MAILBUS_POLICY_NATS_PASSWORD MAILBUS_QUEUE_NATS_PASSWORD \
      MAILBUS_DELIVERY_NATS_PASSWORD MAILBUS_NOTIFIER_NATS_PASSWORD; do
    eval "value=\${$name:-}"
    case "$value" in
      "" | demo-only-*)
        echo "mailbus: $name is unset or the public demo password: set it" \
          "(openssl rand -hex 24), or MAILBUS_DEMO=1 for a demo on this machine" >&2
        exit 78
        ;;
    esac
  done
fi
exec nats-server "$@"
