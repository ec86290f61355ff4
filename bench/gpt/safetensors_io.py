"""A small safetensors writer and reader (the `safetensors` package is not available here).

Format: an 8-byte little-endian header length N, N bytes of JSON header
{name: {"dtype": "F32"|"F64"|..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}, then the raw little-endian data; offsets are relative to the end of the header and
the tensors tile the data section exactly. As ringflow's models/safetensors.cpp writes it, the
header is padded with spaces so the data starts 8-byte aligned, and tensors follow in the order
given. ringflow reads F32, F64, F16, BF16, I32, I64, U8 and refuses gaps, overlaps and trailing
bytes; so does read() below.

Tensors are passed as raw bytes here (no torch or numpy needed); gpt_ref.py converts.
"""
import json
import struct

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}
METADATA = "__metadata__"


class SafetensorsError(Exception):
    pass


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def dumps(tensors, metadata=None):
    """The file's bytes. tensors: list of (name, dtype, shape, data bytes), written in order."""
    header = {}
    chunks = []
    offset = 0
    for name, dtype, shape, data in tensors:
        if not name or name == METADATA:
            raise SafetensorsError(f"bad tensor name {name!r}")
        if name in header:
            raise SafetensorsError(f"tensor name {name!r} appears twice")
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"tensor {name!r}: unsupported dtype {dtype!r}")
        shape = [int(s) for s in shape]
        if any(s < 0 for s in shape):
            raise SafetensorsError(f"tensor {name!r}: negative dimension in {shape}")
        nbytes = _numel(shape) * DTYPE_SIZES[dtype]
        if len(data) != nbytes:
            raise SafetensorsError(
                f"tensor {name!r}: {len(data)} bytes of data, shape {shape} of {dtype} needs {nbytes}")
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        chunks.append(bytes(data))
        offset += nbytes
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError("metadata keys and values must be strings")
        header[METADATA] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write(path, tensors, metadata=None):
    data = dumps(tensors, metadata)
    with open(path, "wb") as f:
        f.write(data)


def loads(raw, what="safetensors data"):
    """(tensors, metadata): tensors is {name: (dtype, shape, bytes)} in file order."""
    if len(raw) < 8:
        raise SafetensorsError(f"{what}: {len(raw)} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise SafetensorsError(f"{what}: header length {n} is larger than the file")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{what}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{what}: header is not a JSON object")
    data = raw[8 + n:]
    metadata = header.pop(METADATA, {}) or {}
    spans = []
    tensors = {}
    for name, v in header.items():
        try:
            dtype, shape, (b, e) = v["dtype"], v["shape"], v["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{what}: tensor {name!r} has a malformed entry") from None
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"{what}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not (0 <= b <= e <= len(data)) or e - b != _numel(shape) * DTYPE_SIZES[dtype]:
            raise SafetensorsError(f"{what}: tensor {name!r} has bad data_offsets [{b}, {e}]")
        spans.append((b, e, name))
        tensors[name] = (dtype, list(shape), data[b:e])
    expect = 0
    for b, e, name in sorted(spans):
        if b != expect:
            raise SafetensorsError(f"{what}: tensor {name!r} starts at {b}, expected {expect} "
                                   "(gap or overlap)")
        expect = e
    if expect != len(data):
        raise SafetensorsError(f"{what}: {len(data) - expect} trailing bytes after the tensors")
    return tensors, metadata


def read(path):
    with open(path, "rb") as f:
        return loads(f.read(), path)
