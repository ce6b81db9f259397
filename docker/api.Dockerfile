# The HTTP API: FastAPI and the RQ client, no torch (it never loads a model).
# Build from the repository root: docker build -f docker/api.Dockerfile -t cascade-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 cascade \
    && mkdir -p /data/results \
    && chown cascade /data/results
WORKDIR /app

# Only the `api` and `s3` extras are installed, then the project itself without its (torch)
# dependencies: the API imports torch-free modules only (tests/test_api.py checks).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; extras = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print('\n'.join(extras['api'] + extras['s3']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# The layers the API imports: the torch-free parts of cascade/, jobs/ and api/ itself.
COPY cascade/ cascade/
COPY jobs/ jobs/
COPY api/ api/
RUN pip install --no-deps . \
    && python -c "import sys, api.main; assert 'torch' not in sys.modules"

USER cascade
ENV CASCADE_STORE=/data/results
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--no-access-log"]
