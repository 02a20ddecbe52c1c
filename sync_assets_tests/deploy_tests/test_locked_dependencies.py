"""The dependency locks, as someone installing the project or building the image meets them.

`make lock` writes locks/image.txt (the runtime set with the `k8s` extra, for the Dockerfile) and
locks/dev.txt (the runtime set with the `dev` extra, for `make install` and so CI) from
pyproject.toml with pip-compile: every package, direct and transitive, at one version with the
hashes of its files, and setuptools for building the project. These tests read the locks, the
installed environment's metadata and the install commands of the Makefile, .ci/run and the
Dockerfile; no package index is asked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

PROJECT = Path(__file__).resolve().parents[2]
DEV_LOCK = "locks/dev.txt"
IMAGE_LOCK = "locks/image.txt"
# What the venv (Makefile) and the image (Dockerfile) install, and from which lock.
LOCKS = {DEV_LOCK: "dev", IMAGE_LOCK: "k8s"}


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: frozenset[str]


def parse_lock(text: str) -> dict[NormalizedName, Pin]:
    """Each entry of a hash-checked requirements file; ValueError for anything else in it (an
    option such as --index-url, an editable or URL requirement, a range, an entry without a
    hash), as none of those belongs in a lock that pins files."""
    pins: dict[NormalizedName, Pin] = {}
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0].startswith("-"):
            raise ValueError(f"an option in a lock: {line[:80]}")
        requirement = Requirement(words[0])
        hashes = frozenset(word.removeprefix("--hash=sha256:") for word in words[1:])
        specifiers = list(requirement.specifier)
        if requirement.url or len(specifiers) != 1 or specifiers[0].operator != "==":
            raise ValueError(f"{words[0]} is not pinned to one version")
        if not hashes or not all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in hashes):
            raise ValueError(f"{words[0]} has no sha256 hash for every file")
        pins[canonicalize_name(requirement.name)] = Pin(specifiers[0].version, hashes)
    return pins


def read_lock(name: str) -> dict[NormalizedName, Pin]:
    return parse_lock((PROJECT / name).read_text())


def pyproject() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())


def declared(extra: str) -> list[Requirement]:
    """pyproject.toml's requirements for an install with this extra, the build backend's too."""
    project = pyproject()
    return [
        Requirement(text)
        for text in (
            *project["project"]["dependencies"],
            *project["project"]["optional-dependencies"][extra],
            *project["build-system"]["requires"],
        )
    ]


def wanted(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether an install that asked for these extras needs this requirement here."""
    return requirement.marker is None or any(
        requirement.marker.evaluate({"extra": extra}) for extra in extras | {""}
    )


def installed_closure(extras: frozenset[str]) -> dict[NormalizedName, str]:
    """Every distribution the installed project needs with these extras, direct and transitive,
    with its installed version (from the environment's metadata)."""
    found: dict[NormalizedName, str] = {}
    pending = [(Requirement("sync_assets"), extras)]
    while pending:
        requirement, asked = pending.pop()
        name = canonicalize_name(requirement.name)
        distribution = metadata.distribution(name)
        if name != "sync-assets":
            if name in found:
                continue
            found[name] = distribution.version
        for text in distribution.requires or []:
            dependency = Requirement(text)
            if wanted(dependency, asked):
                pending.append((dependency, frozenset(dependency.extras)))
    return found


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of shell text: continuation lines joined, split at && || ; | &."""
    commands: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", "&"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(token)
    return commands


def pip_arguments(command: list[str], subcommand: str) -> list[str] | None:
    """The arguments of `pip <subcommand>` (pip, .../pip or python -m pip), else None."""
    for index, word in enumerate(command):
        is_pip = word == "pip" or word.endswith("/pip")
        if is_pip and subcommand in command[index + 1 :]:
            rest = command[index + 1 :]
            return rest[rest.index(subcommand) + 1 :]
    return None


def install_problems(commands: list[list[str]], lock: str) -> list[str]:
    """Why these commands do not install exactly what the lock names: the lock first, hash
    checked; any other install is the project alone (no dependencies); then `pip check`."""
    problems: list[str] = []
    installs = [args for command in commands if (args := pip_arguments(command, "install"))]
    checks = [command for command in commands if pip_arguments(command, "check") is not None]
    from_lock = [
        args
        for args in installs
        if "--require-hashes" in args and "-r" in args and args[args.index("-r") + 1] == lock
    ]
    if not from_lock:
        problems.append(f"nothing is installed from {lock} with --require-hashes")
    for args in installs:
        if args in from_lock:
            continue
        targets = [word for word in args if not word.startswith("-")]
        if "--no-deps" not in args or targets != ["."]:
            problems.append(f"pip install {' '.join(args)} installs something not in {lock}")
    if not checks:
        problems.append("no `pip check` after the install: a dependency left out would go unseen")
    return problems


def make_dry_run(*targets: str) -> str:
    """The commands `make` would run for these targets, all of them as if out of date."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *targets],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def dockerfile_runs() -> str:
    """The Dockerfile's RUN instructions' shell text."""
    text = (PROJECT / "Dockerfile").read_text().replace("\\\n", " ")
    return "\n".join(
        line.strip()[len("RUN ") :] for line in text.splitlines() if line.strip().startswith("RUN ")
    )


# --- the rules, on made-up input -----------------------------------------------------------------


def test_a_lock_entry_needs_one_version_and_hashes() -> None:
    digest = "a" * 64
    assert parse_lock(f"Click==8.1.0 \\\n    --hash=sha256:{digest}\n    # via x\n") == {
        "click": Pin("8.1.0", frozenset({digest}))
    }
    for bad in (
        "click==8.1.0\n",
        "click>=8.1 --hash=sha256:" + digest,
        "click==8.1.0 --hash=sha256:short",
        "--index-url https://example.org/simple\n",
        "-e .\n",
        "click @ https://example.org/click.whl --hash=sha256:" + digest,
    ):
        with pytest.raises(ValueError):
            parse_lock(bad)


def test_an_install_outside_the_lock_is_named() -> None:
    good = shell_commands(
        "pip install --no-deps --require-hashes -r locks/x.txt\n"
        "python -m pip --quiet install --no-deps -e . && pip check"
    )
    assert install_problems(good, "locks/x.txt") == []
    assert install_problems(shell_commands("pip install '.[k8s]'"), "locks/x.txt") == [
        "nothing is installed from locks/x.txt with --require-hashes",
        "pip install .[k8s] installs something not in locks/x.txt",
        "no `pip check` after the install: a dependency left out would go unseen",
    ]
    assert install_problems(
        shell_commands("pip install --require-hashes -r locks/x.txt && pip install -U pip"),
        "locks/x.txt",
    ) == [
        "pip install -U pip installs something not in locks/x.txt",
        "no `pip check` after the install: a dependency left out would go unseen",
    ]


# --- the locks themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_pins_every_entry_to_one_version_with_hashes(lock: str) -> None:
    pins = read_lock(lock)  # raises on an entry without a hash, a range, an option
    assert pins, f"{lock} is empty"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_holds_what_pyproject_asks_for_at_versions_it_allows(lock: str) -> None:
    pins = read_lock(lock)
    for requirement in declared(LOCKS[lock]):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} (pyproject.toml) is not in {lock}: run `make lock`"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"pyproject.toml asks for {requirement}, {lock} has {pins[name].version}: "
            "run `make lock`"
        )


def test_the_installed_environment_is_the_dev_lock_with_every_transitive_dependency() -> None:
    pins = read_lock(DEV_LOCK)
    for name, version in installed_closure(frozenset({"dev"})).items():
        assert name in pins, f"{name} is installed as a dependency but not in {DEV_LOCK}"
        assert pins[name].version == version, (
            f"{name} {version} is installed, {DEV_LOCK} has {pins[name].version}"
        )


def test_the_image_lock_holds_every_runtime_dependency_at_the_tested_version() -> None:
    image = read_lock(IMAGE_LOCK)
    for name, version in installed_closure(frozenset()).items():
        assert name in image, f"{name} is a runtime dependency but not in {IMAGE_LOCK}"
        assert image[name].version == version, (
            f"the tests run {name} {version}, the image would have {image[name].version}"
        )


def test_both_locks_pin_the_same_files_for_the_packages_they_share() -> None:
    dev, image = read_lock(DEV_LOCK), read_lock(IMAGE_LOCK)
    for name in dev.keys() & image.keys():
        assert dev[name] == image[name], name


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_make_lock_writes_the_lock_as_it_is(lock: str) -> None:
    """The lock's header (pip-compile's own record of its command) is what `make lock` runs, so
    `make lock` rewrites these files rather than some others."""
    header = re.search(r"^#    (pip-compile .*)$", (PROJECT / lock).read_text(), re.MULTILINE)
    assert header, f"{lock} was not written by pip-compile"
    recorded = set(shlex.split(header[1])[1:])
    commands = [
        command
        for command in shell_commands(make_dry_run("lock"))
        if command[0].endswith("/pip-compile")
    ]
    runs = []
    for command in commands:
        words: set[str] = set()
        arguments = iter(command[1:])
        for word in arguments:
            if word in ("--extra", "--constraint", "--output-file"):
                word = f"{word}={next(arguments)}"
            if word not in ("--quiet", "--no-config"):
                words.add(word)
        runs.append(words)
    assert recorded in runs, f"`make lock` does not write {lock} as its header says"


# --- who installs from them ----------------------------------------------------------------------


def test_make_install_installs_only_the_dev_lock() -> None:
    assert install_problems(shell_commands(make_dry_run("install")), DEV_LOCK) == []


def test_ci_installs_through_make_and_so_from_the_dev_lock() -> None:
    ci = shell_commands((PROJECT / ".ci" / "run").read_text())
    assert ["make", "test"] in ci
    assert not [command for command in ci if pip_arguments(command, "install") is not None]
    assert install_problems(shell_commands(make_dry_run("test")), DEV_LOCK) == []


def test_the_image_installs_only_the_image_lock() -> None:
    assert install_problems(shell_commands(dockerfile_runs()), IMAGE_LOCK) == []
    copies = [line for line in (PROJECT / "Dockerfile").read_text().splitlines() if "COPY" in line]
    assert any(IMAGE_LOCK in line for line in copies), f"the build stage does not copy {IMAGE_LOCK}"
