# themis-daemon in a container.
#
#   docker build -t themis-daemon .
#   docker run -p 8080:8080 -v /path/to/themis/storage:/data:ro themis-daemon
#
# The storage root (the folder holding experiments/) is mounted read-only at /data; the daemon
# never writes into it. Configure with THEMIS_* variables (e.g. -e THEMIS_AUTH_API_KEYS=key) or
# mount a config file and set THEMIS_CONFIG=/etc/themis-daemon/config.yaml.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/themis-daemon
WORKDIR /src
COPY . .
RUN /opt/themis-daemon/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/themis-daemon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/themis-daemon /opt/themis-daemon
RUN groupadd --system --gid 10001 themis \
    && useradd --system --uid 10001 --gid themis --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin themis \
    && mkdir -p /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
# SIGTERM drains in-flight requests (server.drain_timeout, 10 s) and closes WebSockets with 1001;
# give `docker stop` more than that: docker stop -t 20.
STOPSIGNAL SIGTERM
CMD ["themis-daemon", "serve", "--host", "0.0.0.0", "--port", "8080", "--storage", "/data"]
