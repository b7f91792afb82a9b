# syntax=docker/dockerfile:1
# copml's image: `docker build -t copml:0.1.0 .` from the repository root; add
# `--build-arg VISION=true` for the x-ray application's PyTorch models (CPU build) and
# `--build-arg CLUSTER=true` for Spark and Ray (`copml score --engine`): PySpark, Ray Data
# and the Java 17 runtime that Spark's driver and executors need.
# A team's project image adds its code and copml.yaml on top (docs/deploy.md).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG VISION=false
ARG CLUSTER=false
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/copml
ENV PATH=/opt/copml/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# PyTorch's CPU build first: the plain `torch` requirement of the vision extra would pull
# the CUDA build and gigabytes of NVIDIA libraries. DL3013 (pin pip versions) cannot apply
# to copml's own source tree; its dependencies' bounds are pyproject.toml's.
# hadolint ignore=DL3013
RUN extras=postgres \
    && if [ "$VISION" = "true" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" \
        && extras="$extras,vision"; \
    fi \
    && if [ "$CLUSTER" = "true" ]; then extras="$extras,cluster"; fi \
    && pip install --no-cache-dir ".[$extras]"

FROM python:${PYTHON_VERSION}-slim-bookworm
# tini as PID 1: a Python PID 1 ignores SIGTERM (Kubernetes' stop signal) and does not
# reap the processes that training and scoring start.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 copml \
    && useradd --system --uid 10001 --gid copml --no-create-home --shell /usr/sbin/nologin copml \
    && mkdir -p /project /var/lib/copml \
    && chown copml:copml /var/lib/copml
# Spark runs on the JVM: Debian's Java 17 runtime, only in a CLUSTER image. Its version is
# Debian's security stream, not a pin (DL3008): a pinned JRE would stop getting fixes.
ARG CLUSTER=false
# hadolint ignore=DL3008
RUN if [ "$CLUSTER" = "true" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/copml /opt/copml
# COPML_HOME holds snapshots, verified model copies and the PII key: a volume in
# production. HOME and MPLCONFIGDIR point at /tmp so a read-only root file system works.
ENV PATH=/opt/copml/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COPML_HOME=/var/lib/copml \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /project
USER 10001:10001
EXPOSE 8000 8080
ENTRYPOINT ["tini", "--", "copml"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
