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
# Every dependency from the lock that `make lock` writes from pyproject.toml (the runtime set, with
# dagster-k8s for the Kubernetes run launcher: the `k8s` extra), each file checked against its
# hash; two builds install the same files. --no-deps: the lock is the whole set, and `pip check`
# below fails if it left out a dependency.
COPY locks/image.txt ./locks/
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r locks/image.txt
COPY pyproject.toml README.md ./
COPY sync_assets ./sync_assets
# Then the project alone, a regular (not editable) install built by the locked setuptools;
# nothing of the source tree is needed at run time.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip check

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
