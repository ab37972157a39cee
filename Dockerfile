# syntax=docker/dockerfile:1
# scopegate: the sidecar image.   docker build -t scopegate .   (or podman build)
# README "Deploy" shows how to run it; .ci/container-smoke builds and runs it in CI.
#
# BASE_IMAGE: the official slim Python image by default. Any Debian-like image with python3 (>= 3.11) and
# its venv module works: CI, which reaches no registry, passes a base it makes with mmdebstrap. Both stages
# use the same base, so the virtual environment's interpreter path is the same in both.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The package index (a mirror, say); a CA bundle for it can come as the build secret "pip-ca", which is
# mounted for the one RUN that needs it and never lands in a layer.
ARG PIP_INDEX_URL=https://pypi.org/simple
# Optional dependency groups of pyproject.toml: "postgres" (the driver for a shared PostgreSQL store, which
# the Kubernetes "shared" overlay uses) by default; empty for SQLite only.
ARG EXTRAS=postgres
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config/ config/
COPY authz/ authz/
COPY proxy/ proxy/
# The dependencies come from the project's own metadata (pyproject.toml); wheels only, so the build needs
# no compiler. pip itself is removed from the result: nothing installs anything at run time.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && project=. && if [ -n "${EXTRAS}" ]; then project=".[${EXTRAS}]"; fi \
    && python3 -m venv /opt/scopegate \
    && /opt/scopegate/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
         --index-url "${PIP_INDEX_URL}" "${project}" \
    && /opt/scopegate/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
    && /opt/scopegate/bin/scopegate check

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="scopegate" \
      org.opencontainers.image.description="OAuth 2.0 bearer-token sidecar proxy with an Okta-like authorization core" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="README.md, section Deploy"
# A fixed numeric user, so that runAsNonRoot can check it and volume ownership is predictable. The state
# directory is the user's alone: it holds the signing keys.
RUN groupadd --gid 10001 scopegate \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
         --home-dir /var/lib/scopegate --shell /usr/sbin/nologin scopegate \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/scopegate
COPY --from=build /opt/scopegate /opt/scopegate
COPY examples/container/demo.yaml /etc/scopegate/demo.yaml
# Bytecode is compiled at install time; the root filesystem may be read-only at run time.
ENV PATH=/opt/scopegate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# The state directory. No VOLUME here on purpose: with a read-only root and nothing mounted on it, scopegate
# stops at once with one line ("cannot open store ...") instead of writing to a volume nobody asked for.
WORKDIR /var/lib/scopegate
EXPOSE 8080 8081 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["scopegate"]
CMD ["run"]
