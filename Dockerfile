# One image for the API and the GPU workers; `command` in compose.yaml picks the role.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY strategies ./strategies
RUN pip install .
RUN useradd --create-home camloop && mkdir -p /data /artifacts && chown camloop /data /artifacts
USER camloop
EXPOSE 8000
CMD ["camloop", "serve", "--host", "0.0.0.0", "--port", "8000"]
