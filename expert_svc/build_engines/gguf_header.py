"""Reads the metadata of a GGUF file (the key/value header only, never the tensors).

The manifest check needs a GGUF model's layer widths and head counts before anything heavy is
imported; the format's header is simple enough to read without the `gguf` package.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

_MAGIC = b"GGUF"
# GGUF value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array,
# 10 u64, 11 i64, 12 f64.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_MAX_STRING = 1 << 24
_MAX_ARRAY = 1 << 26


class GGUFError(ValueError):
    """The file is not a readable GGUF file."""


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("file ends inside the GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    if length > _MAX_STRING:
        raise GGUFError(f"GGUF string of {length} bytes is implausible")
    data = f.read(length)
    if len(data) != length:
        raise GGUFError("file ends inside the GGUF header")
    return data.decode("utf-8", errors="replace")


def _value(f: BinaryIO, value_type: int, *, keep: bool) -> Any:
    if value_type in _SCALARS:
        return _read(f, _SCALARS[value_type])
    if value_type == 8:
        return _string(f)
    if value_type == 9:
        item_type = _read(f, "<I")
        count = _read(f, "<Q")
        if count > _MAX_ARRAY:
            raise GGUFError(f"GGUF array of {count} items is implausible")
        if not keep and item_type in _SCALARS:  # skip big arrays (the vocabulary) without decoding
            f.seek(count * struct.calcsize(_SCALARS[item_type]), 1)
            return None
        items = [_value(f, item_type, keep=keep) for _ in range(count)]
        return items if keep else None
    raise GGUFError(f"unknown GGUF value type {value_type}")


def read_gguf_metadata(path: str, wanted: set[str] | None = None) -> dict[str, Any]:
    """The header's key/value pairs (only `wanted` keys are decoded when given)."""
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (bad magic)")
        version = _read(f, "<I")
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or later)")
        _read(f, "<Q")  # tensor count
        kv_count = _read(f, "<Q")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = _string(f)
            value_type = _read(f, "<I")
            keep = wanted is None or key in wanted
            value = _value(f, value_type, keep=keep)
            if keep:
                metadata[key] = value
        return metadata


def write_gguf_metadata(path: str, metadata: dict[str, Any]) -> None:
    """Write a GGUF file holding only a header (for tests); ints become u32, strings strings."""
    with open(path, "wb") as f:
        f.write(_MAGIC + struct.pack("<IQQ", 3, 0, len(metadata)))
        for key, value in metadata.items():
            encoded = key.encode()
            f.write(struct.pack("<Q", len(encoded)) + encoded)
            if isinstance(value, str):
                data = value.encode()
                f.write(struct.pack("<IQ", 8, len(data)) + data)
            elif isinstance(value, int):
                f.write(struct.pack("<II", 4, value))
            else:
                raise TypeError(f"cannot write {type(value).__name__} values")
