"""Build steps pyproject.toml cannot express: the Cython core and the gRPC stubs."""
from __future__ import annotations

import runpy
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()


class BuildPyWithStubs(build_py):
    """Generates the gRPC stubs before collecting Python files."""

    def run(self) -> None:
        generate_stubs = runpy.run_path(str(ROOT / "protos" / "generate.py"))["generate_stubs"]
        # Editable installs import from the source tree, so the stubs go there.
        generate_stubs(ROOT if getattr(self, "editable_mode", False) else Path(self.build_lib))
        super().run()


setup(
    ext_modules=cythonize(
        [Extension("core._featurizer", ["core/_featurizer.pyx"], extra_compile_args=["-O3"]),
         Extension("core._routing", ["core/_routing.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    ),
    cmdclass={"build_py": BuildPyWithStubs},
)
