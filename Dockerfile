# One image for the API and the GPU workers; `command` in compose.yaml picks the role
# (`camloop serve` or `camloop worker`). Build: docker compose build (or docker build -t camloop:local .).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    CAMLOOP_DATA_DIR=/data CAMLOOP_ARTIFACTS_DIR=/artifacts
# Fashion-MNIST from Debian, so `camloop demo` and `camloop simulate` work inside the image too.
RUN apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY engine ./engine
COPY workers ./workers
COPY strategies ./strategies
# The exact versions scripts/setup installs (Python 3.11, x86_64): a new upstream release cannot
# change the image behind our back (sentry-sdk 3.0 once broke a fresh Label Studio set-up).
COPY scripts/constraints/camloop.txt ./constraints.txt
RUN pip install -c constraints.txt . && camloop --help >/dev/null
RUN useradd --create-home camloop && mkdir -p /data /artifacts && chown camloop /data /artifacts
USER camloop
EXPOSE 8000
CMD ["camloop", "serve", "--host", "0.0.0.0", "--port", "8000"]
