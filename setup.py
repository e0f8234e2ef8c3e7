"""Build steps pyproject.toml cannot express: the Cython core, the native relay and the gRPC stubs.

The stubs are generated into the source tree before setup() runs, so package discovery sees
`expert_router.v1` like any other package, in editable and regular installs alike (the folder is
git-ignored: generated, never edited, never committed).

The native relay (router_svc/native/relay.cc) is built against gRPC's C++ library when pkg-config
finds it (Debian: libgrpc++-dev; `make install` installs it when it can). Without it the package
builds without the relay, says so once, and the router serves with its Python relay.
"""
from __future__ import annotations

import runpy
import shlex
import subprocess
import sys
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent.resolve()

runpy.run_path(str(ROOT / "protos" / "generate.py"))["generate_stubs"](ROOT)


def pkg_config(*args: str) -> list[str] | None:
    """pkg-config's answer split into arguments, or None when the package (or pkg-config) is missing."""
    try:
        result = subprocess.run(["pkg-config", *args], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return shlex.split(result.stdout) if result.returncode == 0 else None


def native_relay() -> list[Extension]:
    cflags = pkg_config("--cflags", "grpc++")
    libs = pkg_config("--libs", "grpc++")
    if cflags is None or libs is None:
        print("expert-router: gRPC's C++ library (pkg-config grpc++) not found: building without the "
              "native relay; the router will use its Python relay", file=sys.stderr)
        return []
    return [Extension(
        "router_svc._relay", ["router_svc/native/relay.cc"], language="c++",
        extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden", *cflags],
        extra_link_args=libs,
    )]


setup(
    ext_modules=[
        *cythonize(
            [Extension("core._featurizer", ["core/_featurizer.pyx"], extra_compile_args=["-O3"]),
             Extension("core._routing", ["core/_routing.pyx"], extra_compile_args=["-O3"])],
            compiler_directives={"language_level": "3"},
            quiet=True,
        ),
        *native_relay(),
    ],
)
