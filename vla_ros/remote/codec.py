"""msgpack with numpy arrays, in openpi's wire format (openpi_client/msgpack_numpy.py), without pickle.

An array travels as a msgpack map

    {"__ndarray__": True, "data": <raw bytes, C order>, "dtype": dtype.str, "shape": [d0, d1, ...]}

and a numpy scalar as {"__npgeneric__": True, "data": <the Python value>, "dtype": dtype.str}.
openpi's packer writes these four keys as msgpack *bin* strings (b"__ndarray__"), so `encode`
does the same and its output is byte for byte what openpi-client's `packb` writes for the same
object; `decode` takes the keys as bin or str.

Refused, with one line that names the problem (CodecError): bytes that are not one msgpack
value, msgpack ext types (openpi never sends them; nothing here decodes one), object and void
(structured) dtypes, which are the only way numpy could be asked to build Python objects, a
dtype string numpy does not know, a shape that is not a list of sizes >= 0, and data whose length
is not shape x itemsize. Decoded arrays are read-only views of the message (no copy).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from vla_ros.errors import VlaRosError

# dtype kinds never packed or unpacked: Python objects, and void / structured records (which can
# hold objects). openpi's packer refuses these and complex ("c"); complex is harmless, so it is
# accepted here in both directions.
REFUSED_KINDS = frozenset("OV")

_NDARRAY, _NPGENERIC = "__ndarray__", "__npgeneric__"
_B_NDARRAY, _B_NPGENERIC = b"__ndarray__", b"__npgeneric__"


class CodecError(VlaRosError, ValueError):
    """A message that is not a msgpack value this codec accepts; the text says why, in one line."""


def _check_dtype(spec: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise CodecError(f"array dtype must be a numpy dtype string such as '<f4', got {type(spec).__name__}")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError, SyntaxError):
        raise CodecError(f"array dtype {spec!r} is not a numpy dtype") from None
    if dtype.kind in REFUSED_KINDS or dtype.hasobject:
        raise CodecError(f"array dtype {spec!r} refused: object and void dtypes are never decoded")
    return dtype


def _pack(obj: Any) -> Any:
    """msgpack's `default` hook: numpy arrays and scalars in openpi's layout."""
    if isinstance(obj, (np.ndarray, np.generic)) and (obj.dtype.kind in REFUSED_KINDS or obj.dtype.hasobject):
        raise CodecError(
            f"cannot send a numpy array of dtype {obj.dtype}: object and void dtypes are refused")
    if isinstance(obj, np.ndarray):
        return {_B_NDARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {_B_NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise CodecError(f"cannot send a {type(obj).__name__}: only msgpack types and numpy arrays/scalars")


def _field(obj: dict, name: str) -> Any:
    if name in obj:
        return obj[name]
    key = name.encode()
    if key in obj:
        return obj[key]
    raise CodecError(f"numpy record without its {name!r} field")


def _unpack(obj: dict) -> Any:
    """msgpack's `object_hook`: openpi's array and scalar maps back to numpy; other maps as they are."""
    if _NDARRAY in obj or _B_NDARRAY in obj:
        dtype = _check_dtype(_field(obj, "dtype"))
        data, shape = _field(obj, "data"), _field(obj, "shape")
        if not isinstance(data, bytes):
            raise CodecError(f"array data must be msgpack bin bytes, got {type(data).__name__}")
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise CodecError(f"array shape must be a list of sizes >= 0, got {shape!r}")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(data):
            raise CodecError(
                f"array of shape {list(shape)} and dtype {dtype.str} needs {count * dtype.itemsize} bytes, "
                f"the message has {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    if _NPGENERIC in obj or _B_NPGENERIC in obj:
        dtype = _check_dtype(_field(obj, "dtype"))
        try:
            return dtype.type(_field(obj, "data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"numpy scalar of dtype {dtype.str}: {exc}") from None
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack ext type {code} refused: this protocol uses no ext types")


def encode(obj: Any) -> bytes:
    """One msgpack message; numpy arrays and scalars in openpi's layout (CodecError: what cannot be sent)."""
    try:
        return msgpack.packb(obj, default=_pack, use_bin_type=True)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode the message: {exc}") from None


def decode(data: bytes | bytearray | memoryview) -> Any:
    """The value in one msgpack message, numpy records turned back into arrays (CodecError: why not)."""
    try:
        # raw=False: msgpack str -> str, bin -> bytes; map keys must be str or bytes (strict_map_key).
        return msgpack.unpackb(data, object_hook=_unpack, ext_hook=_refuse_ext, raw=False)
    except CodecError:
        raise
    except msgpack.ExtraData:
        raise CodecError("not one msgpack value: extra bytes after the first") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise CodecError(f"not a msgpack message ({detail})") from None
