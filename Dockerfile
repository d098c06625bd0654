# bridge: Kubernetes <-> Consul service discovery with a cluster.local DNS server.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY config ./config
RUN pip install --no-compile . \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bridge

USER 10001
# DNS on 5353 so the unprivileged user can bind it; a Service maps 53 -> 5353, and a sidecar
# sets net.ipv4.ip_unprivileged_port_start=53 (a safe sysctl) to serve 53 itself.
EXPOSE 5353/udp 5353/tcp 8080/tcp
ENTRYPOINT ["bridge", "run"]
CMD ["--dns-listen", "0.0.0.0:5353", "--http-listen", "0.0.0.0:8080"]
