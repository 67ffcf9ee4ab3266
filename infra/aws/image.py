"""Build the worker image from worker_runtime/Dockerfile and push it to the stage's ECR
repository. The tag is a hash of the files the image is built from, so an unchanged
worker is neither rebuilt nor pushed again (the repository's tags are immutable)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "worker_runtime" / "Dockerfile"
BUILD_INPUTS = ("requirements.txt", "requirements-worker.txt", "chalicelib", "worker_runtime")


class ImageError(RuntimeError):
    pass


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "no Docker engine answers (`docker info` failed)"
    return None


def content_tag(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    files = [DOCKERFILE]
    for name in BUILD_INPUTS:
        path = root / name
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    for path in files:
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return "w-" + digest.hexdigest()[:16]


def image_exists(ecr: Any, repository: str, tag: str) -> bool:
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ImageNotFoundException":
            return False
        raise


def build_and_push(ecr: Any, repository_uri: str, out: Callable[[str], None] = print) -> str:
    """Returns the pushed image's URI (repository:tag)."""
    tag = content_tag()
    image = f"{repository_uri}:{tag}"
    repository = repository_uri.split("/", 1)[1]
    if image_exists(ecr, repository, tag):
        out(f"worker image {image}: already pushed")
        return image
    out(f"worker image {image}: building")
    _run(["docker", "build", "--platform", "linux/amd64", "-f", str(DOCKERFILE), "-t", image, str(ROOT)],
         env={"DOCKER_BUILDKIT": "1"})
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    _run(["docker", "login", "--username", user, "--password-stdin", auth["proxyEndpoint"]], stdin=password)
    out(f"worker image {image}: pushing")
    _run(["docker", "push", image])
    return image


def _run(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> None:
    result = subprocess.run(args, input=stdin, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise ImageError(f"`{' '.join(args[:3])} ...` failed with exit code {result.returncode}")
