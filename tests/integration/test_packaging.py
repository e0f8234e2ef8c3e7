"""`pip install .` from a clean tree: the wheel carries the compiled core, the stubs and the classifier."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def copy_source_tree(tree: Path) -> None:
    """Copies what a clean checkout holds: git's file list, or the tree minus build outputs."""
    try:
        listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                                 cwd=ROOT, capture_output=True, check=False)
    except OSError:  # no git on this machine
        listing = None
    if listing is None or listing.returncode != 0:  # not a git checkout (an unpacked source archive)
        outputs = {".venv", ".git", "build", "dist", "expert_router", ".cache"}
        generated = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.so", "*.c", ".*_cache",
                                           ".hypothesis")

        def ignore(folder: str, names: list[str]) -> set[str]:
            top = outputs.intersection(names) if Path(folder) == ROOT else set()
            return top | set(generated(folder, names))

        shutil.copytree(ROOT, tree, ignore=ignore)
        return
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)


def grpcpp_installed() -> bool:
    try:
        return subprocess.run(["pkg-config", "--exists", "grpc++"], check=False).returncode == 0
    except OSError:
        return False


def test_native_relay_is_built_where_grpcpp_is_installed() -> None:
    """`make install` installs gRPC's C++ library where it can; then the relay must be there, not a fallback."""
    if not grpcpp_installed():
        pytest.skip("gRPC's C++ library is not installed (pkg-config grpc++): the Python relay serves")
    from router_svc import native_relay

    assert native_relay.available(), native_relay.UNAVAILABLE_REASON
    assert native_relay._relay.grpc_version().startswith("1.")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_from_clean_tree_has_compiled_core_and_stubs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    copy_source_tree(tree)
    assert not (tree / "expert_router").exists(), "generated stubs must not be part of the source tree"

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                    str(tree)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("expert_router-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())

    assert any(n.startswith("core/_featurizer.") and n.endswith(".so") for n in names)
    assert any(n.startswith("core/_routing.") and n.endswith(".so") for n in names)
    if grpcpp_installed():  # the native relay is built wherever gRPC's C++ library is
        assert any(n.startswith("router_svc/_relay.") and n.endswith(".so") for n in names)
    for stub in ("expert_router_pb2.py", "expert_router_pb2.pyi", "expert_router_pb2_grpc.py"):
        assert f"expert_router/v1/{stub}" in names
    # Both services import the shared base: a wheel without it serves nothing.
    for module in ("errors", "logs", "parsing", "rules", "tls"):
        assert f"service_base/{module}.py" in names
    if (ROOT / "router_svc" / "classifier_data" / "model.onnx").exists():
        assert "router_svc/classifier_data/model.onnx" in names
        assert "router_svc/classifier_data/metadata.json" in names
