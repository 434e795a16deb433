# The pipeline's image, after Dagster's Docker deployment: by default it serves the code location
# over gRPC on port 4000; the same image runs `dagster-webserver` and `dagster-daemon run`
# (see docs/deployment.md). Installed from uv.lock without the embedded engine: set
# CLICKHOUSE_HOST. No configuration or secret is built in; everything comes from the environment.
#
#   docker build -t agent-metrics-pipeline .
#   docker build --build-arg PACKAGE_INDEX_URL=https://mirror.example/simple \
#       --secret id=index-ca,src=/path/to/ca-bundle.pem -t agent-metrics-pipeline .

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Where packages come from. These arguments live in this stage only, so they never reach the
# published image or its history.
ARG PACKAGE_INDEX_URL=https://pypi.org/simple
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# The optional secret `index-ca` is a CA bundle for an index behind a TLS-inspecting proxy.
# The locked set is exported with its hashes and installed from PACKAGE_INDEX_URL, so a mirror
# serves the same files as the lock names. Bytecode is compiled now: the runtime user cannot
# write next to the installed modules, and every process would compile them again (2-3 s).
RUN --mount=type=secret,id=index-ca \
    set -eu; \
    if [ -s /run/secrets/index-ca ]; then \
        export SSL_CERT_FILE=/run/secrets/index-ca PIP_CERT=/run/secrets/index-ca; \
    fi; \
    python3 -m venv /opt/uv; \
    /opt/uv/bin/pip install --quiet --index-url "$PACKAGE_INDEX_URL" "uv==${UV_VERSION}"; \
    /opt/uv/bin/uv export --frozen --no-dev --no-emit-project --format requirements-txt \
        --output-file /tmp/requirements.txt --quiet; \
    /opt/uv/bin/uv venv --quiet --python "$(command -v python3)" /opt/venv; \
    /opt/uv/bin/uv pip install --python /opt/venv/bin/python --default-index "$PACKAGE_INDEX_URL" \
        --require-hashes --requirement /tmp/requirements.txt
# The package after its dependencies: a change to its code rebuilds from here only.
COPY agent_metrics_pipeline ./agent_metrics_pipeline
RUN --mount=type=secret,id=index-ca \
    set -eu; \
    if [ -s /run/secrets/index-ca ]; then \
        export SSL_CERT_FILE=/run/secrets/index-ca PIP_CERT=/run/secrets/index-ca; \
    fi; \
    /opt/uv/bin/uv pip install --python /opt/venv/bin/python --default-index "$PACKAGE_INDEX_URL" \
        --no-deps .

FROM ${BASE_IMAGE}
# A fixed uid, so volumes and Kubernetes' securityContext can name it.
RUN groupadd --gid 10001 dagster \
    && useradd --uid 10001 --gid dagster --home-dir /opt/dagster --no-create-home dagster \
    && mkdir -p /opt/dagster/dagster_home/storage /opt/dagster/app \
    && chown -R dagster:dagster /opt/dagster
COPY --from=build /opt/venv /opt/venv
COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
COPY deploy/workspace.yaml /opt/dagster/app/workspace.yaml
ENV PATH=/opt/venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    PYTHONUNBUFFERED=1
WORKDIR /opt/dagster/app
USER dagster
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-m", "agent_metrics_pipeline.definitions", \
     "-h", "0.0.0.0", "-p", "4000"]
