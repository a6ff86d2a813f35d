# linkvault as a container image: `api` (the default command) or `worker`, `migrate`, ...
# The build stage turns the repository into wheels; the final stage installs only those,
# with no compiler, no pip cache and no source tree, and runs as an unprivileged user.
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.7-slim-bookworm
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/linkvault --create-home linkvault
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links=/wheels /wheels/linkvault-*.whl \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/linkvault
ENV PYTHONUNBUFFERED=1 \
    LINKVAULT_HOST=0.0.0.0 \
    LINKVAULT_PORT=8000
EXPOSE 8000
# Liveness: the process answers (no database call); orchestrators use /v1/health/ready too.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health/live', timeout=2)"]
ENTRYPOINT ["linkvault"]
CMD ["api"]
