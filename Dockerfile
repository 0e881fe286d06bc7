# tokentrace: `docker build -t tokentrace .`, then e.g. `docker run -p 9090:9090 tokentrace serve --demo`.
# The entry point is the `tokentrace` command; the default runs the embedded server on :9090.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokentrace ./tokentrace
COPY producers ./producers
COPY processors ./processors
COPY api ./api
RUN pip install . \
    && cd / && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/tokentrace tokentrace \
    && mkdir -p /var/lib/tokentrace \
    && chown tokentrace /var/lib/tokentrace

USER tokentrace
WORKDIR /var/lib/tokentrace
EXPOSE 9090
ENTRYPOINT ["tokentrace"]
CMD ["serve", "--addr", ":9090", "--data-dir", "/var/lib/tokentrace"]
