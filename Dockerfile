# syntax=docker/dockerfile:1
#
# One image for all five services; the command picks the service:
#   docker build -t mailbus .
#   docker run mailbus                       # ingress (the default command)
#   docker run mailbus delivery              # short for mailbus-delivery
#   docker run mailbus mailbus-queue --config /etc/mailbus/mailbus.yaml
# The configuration is read from $MAILBUS_CONFIG (/etc/mailbus/mailbus.yaml):
# mount it there. BuildKit is required (the default builder of Docker 23+).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: every wheel the service needs, built where compilers are allowed
FROM ${PYTHON_IMAGE} AS builder

# Most dependencies ship binary wheels; the compiler is for the ones that do
# not on a given architecture (argon2-cffi or cryptography on arm/v7, say).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# README.md is part of the package metadata (pyproject's readme).
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
COPY ops ./ops

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# The pip cache survives between builds (cache mount), and never enters a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# ---- runtime: the interpreter, the wheels, nothing to compile with
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mailbus" \
      org.opencontainers.image.description="SMTP server and MTA as event-sourced services on NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILBUS_CONFIG=/etc/mailbus/mailbus.yaml \
    MAILBUS_HEALTHZ_URL=http://127.0.0.1:9100/healthz

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it without
# reading /etc/passwd, and mounted secrets can be made readable to it (fsGroup).
RUN groupadd --system --gid 10001 mailbus \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin mailbus

# The wheels are bind-mounted from the builder rather than copied, so they
# never become a layer of the final image. pip compiles the .pyc files here,
# at build time, because the root filesystem is read-only at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels mailbus

COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/mailbus-entrypoint

# Unprivileged ports inside the container; the Service or `docker run -p` maps
# 25/587/465/110 onto them, so the process never needs CAP_NET_BIND_SERVICE.
# 9100 serves /metrics, /healthz and /readyz (telemetry.metrics_address).
EXPOSE 2525 2587 2465 2110 9100

USER 10001:10001

# Liveness of whichever service runs: the process's own /healthz. Python, not
# curl, because the slim image has no curl and needs none. An HTTP error
# (503) raises, which exits non-zero: unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['MAILBUS_HEALTHZ_URL'], timeout=4)"]

ENTRYPOINT ["mailbus-entrypoint"]
CMD ["mailbus-ingress", "--config", "/etc/mailbus/mailbus.yaml"]
