# The scArches API service: gunicorn with uvicorn workers on $PORT (8080), configured by the original's variables
# (WORKERS, THREADS, PORT, AWS_BUCKET, AWS_ENDPOINT, AWS_ACCESS_KEY, AWS_SECRET_KEY). See docs/api.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, from PyTorch's CPU index: the default wheel brings gigabytes of CUDA libraries the
# service does not use. The package's own pin (torch==2.13.0) is then already satisfied by 2.13.0+cpu.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
# Dependencies change less often than the code: resolve them in their own layer.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

RUN useradd --create-home --uid 10001 scarches \
    && mkdir -p /data \
    && chown scarches:scarches /data
USER scarches

# /data holds the embedded default's storage (used when AWS_BUCKET is unset) and the job records; mount a volume.
# numba (UMAP) and matplotlib (scanpy) want writable cache folders.
ENV WORKERS=3 \
    THREADS=8 \
    PORT=8080 \
    HOST=0.0.0.0 \
    SCARCHES_DATA_DIR=/data/store \
    SCARCHES_JOBS_DB=/data/jobs.sqlite \
    SCARCHES_WORK_DIR=/tmp/scarches-api \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/liveness' % os.environ.get('PORT', '8080'), timeout=4)"

CMD ["scarches-api", "serve"]
