"""Build steps pyproject.toml cannot express: the Cython core and the gRPC stubs.

The stubs are generated into the source tree before setup() runs, so package discovery sees
`expert_router.v1` like any other package, in editable and regular installs alike (the folder is
git-ignored: generated, never edited, never committed).
"""
from __future__ import annotations

import runpy
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent.resolve()

runpy.run_path(str(ROOT / "protos" / "generate.py"))["generate_stubs"](ROOT)

setup(
    ext_modules=cythonize(
        [Extension("core._featurizer", ["core/_featurizer.pyx"], extra_compile_args=["-O3"]),
         Extension("core._routing", ["core/_routing.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
)
