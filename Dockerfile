# ckptserve on the CPU: `ckptserve serve` over the model directory mounted at /models.
#
#   docker build -t ckptserve .
#   docker run -p 8000:8000 -v "$PWD/models:/models" ckptserve
#   docker run -p 8000:8000 -e AWS_ENDPOINT_URL=... ckptserve s3://bucket/models/ --host 0.0.0.0
#
# Liveness: GET /healthz; readiness: GET /readyz (503 until every model has a live version).
# Linted by tests/scale/test_container.py (hadolint); the image build needs a Docker daemon.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU torch from PyTorch's CPU index first (~200 MB; the default wheel brings ~5 GB of CUDA),
# then the package, which finds torch satisfied.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# The package itself, from this checkout (its dependencies' ranges are in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[server,s3]" \
    && rm -rf /build \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ckptserve \
    && mkdir /models \
    && chown ckptserve /models

USER 10001
WORKDIR /models
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

ENTRYPOINT ["ckptserve", "serve"]
CMD ["/models", "--host", "0.0.0.0", "--port", "8000"]
