# bridge: Kubernetes <-> Consul service discovery with a cluster.local DNS server.
# Two stages: the first builds the wheel (as tests/e2e/test_wheel.py does, from the same
# files), the second installs only that wheel, so the image runs what the tests ran.
FROM python:3.11-slim-bookworm AS wheel

# BRIDGE_REQUIRE_EXTENSION: the compiled DNS fast path must build here (setup.py), so this
# stage alone gets a C compiler; the image below installs the built wheel without one.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 BRIDGE_REQUIRE_EXTENSION=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY bridge ./bridge
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /wheels
# Byte-code is compiled here, at install: the root filesystem is read-only in the pod, and
# every DNS worker process imports the package afresh.
RUN pip install /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bridge
# Every setting at its default, for reference; deploy/ mounts its own at /etc/bridge.
COPY config/bridge.yaml /usr/share/bridge/bridge.yaml

USER 10001
WORKDIR /
# DNS on 5353 so the unprivileged user can bind it; a Service maps 53 -> 5353, and a sidecar
# sets net.ipv4.ip_unprivileged_port_start=53 (a safe sysctl) to serve 53 itself.
EXPOSE 5353/udp 5353/tcp 8080/tcp
ENTRYPOINT ["bridge", "run"]
CMD ["--dns-listen", "0.0.0.0:5353", "--http-listen", "0.0.0.0:8080"]
