# Production image for the phone bridge (FastAPI app served by uvicorn).
#
# Build (BuildKit; it is the default builder of current Docker; with a Docker
# that has no buildx, such as Debian's docker.io 20.10, prefix DOCKER_BUILDKIT=1):
#   docker build -t twilio-realtime-bridge .
# Behind a TLS-intercepting proxy or with a private index, hand pip the host's CA
# bundle as a build secret (mounted for one RUN, never stored in the image) and
# the index URL as a build arg (used only in the build stage):
#   docker build \
#     --secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt \
#     --build-arg PIP_INDEX_URL_ARG=https://pypi.example/simple \
#     -t twilio-realtime-bridge .
# With no base image to pull, build on any base that has python3 (>= 3.11) with
# its venv module: --build-arg BASE_IMAGE=local/py-base (README, "Docker").
#
# Run (PID 1 is uvicorn itself, so the SIGTERM of `docker stop` reaches the app):
#   docker run --stop-timeout 630 --env-file .env -p 8000:8000 twilio-realtime-bridge
# On SIGTERM the app turns /readyz to 503, lets live calls finish for up to
# SHUTDOWN_DRAIN_SECONDS (default 600), ends the calls still open through their
# media stream (a few seconds of teardown) and exits 0 (app/lifecycle.py). Docker
# sends SIGKILL 10 s after SIGTERM unless told otherwise, which would cut every
# live call with no fallback, so the stop timeout must be at least
# SHUTDOWN_DRAIN_SECONDS plus 20 s (up to 5 s ending the calls left, 5 s of server
# teardown, 10 s flushing call records), with a margin: `docker run --stop-timeout 630`,
# `docker stop -t 630`, compose `stop_grace_period: 630s`, Kubernetes
# `terminationGracePeriodSeconds: 640` (deploy/k8s: with its 10 s preStop sleep;
# adjust to your SHUTDOWN_DRAIN_SECONDS).

ARG BASE_IMAGE=python:3.12-slim

# ---------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build

# Index settings for pip, empty = PyPI. Declared in this stage only, so their
# values never reach the final image's history.
ARG PIP_INDEX_URL_ARG=""
ARG PIP_EXTRA_INDEX_URL_ARG=""

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A venv, not the system interpreter: Debian-style bases forbid system-wide pip
# (PEP 668) and some have no `python` or `pip` on PATH at all.
RUN python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ ./app/

# Runtime dependencies only (no dev extras). The CA secret is optional: without
# it pip uses the base image's trust store. pip itself is then dropped from the
# venv: the image never installs anything at run time.
RUN --mount=type=secret,id=cacert,target=/run/secrets/cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    if [ -n "$PIP_INDEX_URL_ARG" ]; then export PIP_INDEX_URL="$PIP_INDEX_URL_ARG"; fi; \
    if [ -n "$PIP_EXTRA_INDEX_URL_ARG" ]; then export PIP_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL_ARG"; fi; \
    pip install . ; \
    pip check; \
    pip uninstall --yes pip setuptools wheel

# -------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE}

# PATH is spelled out: an imported rootfs base image carries no ENV at all.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    DATABASE_URL=sqlite:////data/calls.db

# /data is the one place the app user may write: mount a volume there. Call records
# go to the SQLite file /data/calls.db unless DATABASE_URL names a PostgreSQL server
# (do that with more than one replica: they then share one history). Set
# RECORD_DIR=/data/recordings to record every call as a call fixture (a new named
# volume takes its owner). Records and recordings hold transcripts, and recordings the
# caller's audio too with RECORD_AUDIO=true: personal data.
#
# No pip in the image, the base's included (each step is a no-op where there is
# none): a Debian-packaged pip and the wheels that venv's ensurepip installs from
# (python3-venv pulls python3-pip-whl, itself a runnable pip), then a pip installed
# with Python itself (python:3.12-slim has one in /usr/local). The last line fails
# the build if a pip is still importable.
RUN set -eu; \
    if command -v dpkg-query >/dev/null 2>&1; then \
        pkgs=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 'python3-pip*' \
               'python3*-venv' 'python3-setuptools*' python3-wheel 2>/dev/null \
               | awk '$1 ~ /^.i/ {print $2}' || true); \
        if [ -n "$pkgs" ]; then dpkg --purge $pkgs; fi; \
    fi; \
    if python3 -m pip --version >/dev/null 2>&1; then \
        PIP_ROOT_USER_ACTION=ignore python3 -m pip uninstall --yes pip setuptools wheel; \
    fi; \
    if python3 -m pip --version >/dev/null 2>&1; then \
        echo "pip is still in the image" >&2; exit 1; \
    fi; \
    groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app \
 && mkdir -p /data/recordings \
 && chown -R 10001:10001 /data

COPY --from=build /opt/venv /opt/venv

# The source tree runs from /srv (uvicorn puts its working directory first on
# sys.path), so files in app/ that are not Python modules are there too; the
# venv holds the dependencies and the package metadata.
WORKDIR /srv
COPY app/ ./app/
RUN python -m compileall -q app

USER 10001:10001

EXPOSE 8000

# urllib, not curl: slim bases have no curl. Non-2xx raises, so exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

# `exec` replaces the shell, so uvicorn is PID 1 and gets SIGTERM directly.
# No websocket compression: base64 mu-law barely compresses and deflate costs CPU and
# memory per call (measured with the load benchmark, `make bench`).
# Behind a load balancer: X-Forwarded-Proto/-For are trusted only from the
# addresses or networks in FORWARDED_ALLOW_IPS (uvicorn reads it; unset, only
# loopback: 127.0.0.1 and ::1). Set it to the balancer's, never `*` on a container
# reachable other than through the balancer: anyone could then claim any client
# address. The Twilio
# signature check does not depend on it when PUBLIC_BASE_URL is set (README,
# "Scaling out"). No --timeout-graceful-shutdown: the app drains its own calls on
# SIGTERM (see "Run" above) before uvicorn shuts down.
CMD ["sh", "-c", "exec uvicorn app.main:app --host 0.0.0.0 --port \"${PORT:-8000}\" --ws-per-message-deflate false --proxy-headers"]
