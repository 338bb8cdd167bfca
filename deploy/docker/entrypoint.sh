#!/bin/sh
# Entrypoint of the mailbus image.
#   <service> [ARGS...]   ingress, policy, queue, delivery or notifier: runs
#                         mailbus-<service> ARGS (the config comes from
#                         $MAILBUS_CONFIG unless ARGS give --config)
#   COMMAND [ARGS...]     anything else runs as given: mailbus-ingress --config
#                         FILE, mailbus config check FILE, python -m ..., sh
# `exec` hands PID 1 to the service itself, so SIGTERM reaches it directly and
# starts its graceful drain.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: <ingress|policy|queue|delivery|notifier> [ARGS...] | COMMAND [ARGS...]" >&2
    exit 64
fi

case "$1" in
    ingress | policy | queue | delivery | notifier)
        service="$1"
        shift
        exec "mailbus-$service" "$@"
        ;;
esac
exec "$@"
