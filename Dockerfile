# The sync_assets image: the code server (this CMD), and with another command the webserver and
# the daemon of deploy/compose.yaml; on Kubernetes the code server and its run pods
# (deploy/helm/values.yaml). deploy/README.md says how to build and run it.
#
#   docker build -t sync-assets:$(git rev-parse --short HEAD) .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sync_assets ./sync_assets
# A regular (not editable) install from pyproject.toml, with dagster-k8s for the Kubernetes run
# launcher (the `k8s` extra); nothing of the source tree is needed at run time.
RUN /opt/venv/bin/pip install ".[k8s]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    SYNC_ASSETS_DATA_DIR=/opt/dagster/data \
    SYNC_ASSETS_PROFILE=deployment
RUN useradd --system --uid 10001 --user-group --home-dir /opt/dagster --no-create-home dagster
COPY --from=build /opt/venv /opt/venv
# The production instance and the compose workspace; Helm mounts its own dagster.yaml here.
COPY --chown=10001:10001 deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/dagster_home/
RUN mkdir -p /opt/dagster/app /opt/dagster/data \
    && chown 10001:10001 /opt/dagster /opt/dagster/app /opt/dagster/data /opt/dagster/dagster_home
WORKDIR /opt/dagster/app
USER 10001

EXPOSE 4000
# CMD, not ENTRYPOINT: the Helm chart and compose give whole commands of their own.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "sync_assets.definitions", "--location-name", "sync_assets"]
