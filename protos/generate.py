"""Generates the Python gRPC stubs (with .pyi type stubs) from protos/.

Run by `make protos` and by every package build (setup.py); the output is
never edited by hand and never committed.
"""
from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).parent.resolve()


def generate_stubs(out_dir: Path) -> list[Path]:
    """Runs protoc (from grpcio-tools) over every .proto under protos/ into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    for proto in protos:
        package = out_dir / Path(proto).parent
        while package != out_dir:
            (package / "__init__.py").touch()
            package = package.parent
    return [out_dir / p for p in protos]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent
    for proto in generate_stubs(target):
        print(f"generated stubs for {proto.relative_to(target)}")
