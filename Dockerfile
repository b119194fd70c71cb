# The ae-streamer image used by docker-compose.yml: CPU torch (small), then the project.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The version the Makefile installs and the tests ran with; pyproject.toml keeps a lower bound only.
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

WORKDIR /app
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY streamer ./streamer
COPY models ./models
RUN pip install . && useradd --create-home --uid 10001 streamer && mkdir -p /models && chown streamer /models
USER streamer

ENTRYPOINT ["streamer"]
CMD ["--help"]
