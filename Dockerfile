# livestream-ingester: a small image running as an unprivileged user.
# Dependencies come from requirements.lock (pinned, hash-checked); the project's own wheel is
# built and installed without resolving them again.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY requirements.lock ./
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY ingest ingest
COPY workers workers
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /app ingester
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --no-deps /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY config config
USER ingester
EXPOSE 9464
ENTRYPOINT ["livestream-ingester"]
CMD ["run", "-c", "/app/config/compose.toml"]
