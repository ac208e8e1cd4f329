# keyrail, one instance per container. From the repository's root:
#   docker build -t keyrail .
#   docker run -p 8317:8317 -v $PWD/config.yaml:/etc/keyrail/config.yaml:ro keyrail
# Needs only this repository and the package registries (PyPI, Debian through the base image).
# deploy/docker-compose.yml runs two of these behind nginx, sharing state through Redis.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEYRAIL_CONFIG=/etc/keyrail/config.yaml

WORKDIR /opt/keyrail
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY drivers ./drivers
COPY config/config.example.yaml /etc/keyrail/config.example.yaml
RUN pip install . \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/keyrail --create-home \
      --shell /usr/sbin/nologin keyrail

# Not root: token files the drivers write back go under /var/lib/keyrail (the user's home).
USER keyrail
WORKDIR /var/lib/keyrail
EXPOSE 8317
# /health answers without a client key and never calls an upstream.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('KEYRAIL_HEALTH_URL', 'http://127.0.0.1:8317/health'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
ENTRYPOINT ["keyrail", "serve"]
# Every interface of the container (keyrail refuses that without `api-keys` in the config).
CMD ["--host", "0.0.0.0"]
