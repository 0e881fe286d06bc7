# tokentrace: `docker build -t tokentrace .`, then e.g. `docker run -p 9090:9090 tokentrace serve --demo`.
# The entry point is the `tokentrace` command; the default runs the embedded server on :9090.

# Stage 1: the wheel, with the compiled hot path (native/, Rust). Debian bookworm's Python is 3.11, the
# runtime's minor version, so the compiled module's ABI matches; the build fails rather than ship without it.
FROM rust:1.91-slim-bookworm AS wheel
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokentrace ./tokentrace
COPY producers ./producers
COPY processors ./processors
COPY api ./api
COPY native ./native
RUN python3 -m venv /build \
    && /build/bin/pip install -q "setuptools>=77" "setuptools-rust>=1.10" \
    && /build/bin/pip wheel --no-deps --no-build-isolation -w /wheels . \
    && /build/bin/python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]).namelist(); \
sys.exit(not [n for n in names if n.startswith('tokentrace/_native') and n.endswith('.so')])"

# Stage 2: the runtime.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=wheel /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/tokentrace tokentrace \
    && mkdir -p /var/lib/tokentrace \
    && chown tokentrace /var/lib/tokentrace

USER tokentrace
WORKDIR /var/lib/tokentrace
EXPOSE 9090
ENTRYPOINT ["tokentrace"]
CMD ["serve", "--addr", ":9090", "--data-dir", "/var/lib/tokentrace"]
