"""Reading NVIDIA's StyleGAN network pickles without executing anything from the file.

NVIDIA's ``.pkl`` files (stylegan2-ada-pytorch, stylegan3) are a dict such as ``{"G": ..., "D": ...,
"G_ema": ..., "training_set_kwargs": ..., "augment_pipe": ...}`` whose networks are
``torch_utils.persistence`` records: ``_reconstruct_persistent_obj(meta)`` with ``meta = {"type":
"class", "version": ..., "module_src": <python source>, "class_name": ..., "state": <the module's
__dict__>}``. NVIDIA's loader *executes* ``module_src``; this one never does. It reads the
record as data: the constructor keyword arguments (``state["_init_kwargs"]``) and the parameters
and buffers by name (``_parameters`` / ``_buffers`` / ``_modules``, recursively), then builds our
own network from the kwargs and copies those tensors into it strictly.

The unpickler resolves only an allow-list of names, each to a function written here that builds
plain data: tensor records (``torch._utils._rebuild_tensor_v2`` and friends, over storages parsed
from the bytes torch embeds), numpy arrays and scalars of plain numeric dtypes (``numpy.core`` and
``numpy._core`` spellings), ``OrderedDict``, ``set``, ``dnnlib``'s ``EasyDict`` (as a plain dict) and
persistence records. Anything else -- ``os.system``, ``builtins.eval``, any class -- is refused
before it is called. It is a file, not a program, that is being read, so it is also bounded:

* tensors are *records* (storage, offset, shape, stride) checked against the bytes their storage
  really holds; no tensor is materialised while reading, and a record that repeats elements
  (stride 0, overlapping views) more than its storage holds is refused;
* storages larger than ``LAZY_MIN_BYTES`` stay in the file (offset and length) and are read only
  when the network that uses them is built: loading ``G_ema`` never reads ``G``'s or ``D``'s weights;
* the kwargs that drive the network constructor's loops and filter sizes are checked against the
  tensors stored before it runs, and it runs under an allocation budget (twice the stored tensors'
  bytes) with no random initialisation; its tensors must then match the stored ones by name and
  shape, and only the matched stored bytes are read into them;
* walks over what was read visit each object once: shared references are not expanded into trees,
  and cycles, deep nesting, huge numbers and non-text dict keys are refused in one line.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from latentmap import LatentmapError

PICKLE_PROTOCOL_BYTE = 0x80
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
NETWORK_KEYS = ("G_ema", "G", "D")
LAZY_MIN_BYTES = 1 << 16  # bytes objects this large, outside a pickle frame, stay in the file until used
MAX_DIMS = 32  # tensor dimensions
MAX_INDEX_BITS = 62  # sizes, strides, offsets, element counts
MAX_RECORD_DEPTH = 64  # nesting of module records
MAX_PLAIN_DEPTH = 64  # nesting of constructor kwargs
MAX_PLAIN_VALUES = 100_000  # values in constructor kwargs, a shared one counted each time it appears
MAX_KWARGS_LIST = 256  # entries of one list or dict in constructor kwargs
CONSTRUCTION_SLACK = 16 << 20  # bytes a network's construction may allocate beyond twice its stored tensors

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
}
# numpy dtypes as numpy pickles them (``dtype.str`` without the byte order): plain numbers only.
PLAIN_NUMPY_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asked for something other than tensors and plain containers."""


def brief(value: Any) -> str:
    """A short description of a value read from an untrusted file: never a deep, huge or failing repr."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, (tuple, list)) and len(value) <= 8 and all(
        v is None or isinstance(v, (bool, int, float)) for v in value
    ):
        return "(" + ", ".join(brief(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return f"a {type(value).__name__}"


def _text(value: str, limit: int = 60) -> str:
    """Text from the file, shortened and with control characters escaped (error messages stay one line)."""
    return repr(value[:limit])[1:-1] + ("..." if len(value) > limit else "")


def _index(value: Any, what: str) -> int:
    """A non-negative int small enough to compute with (a hostile 10 MB integer would stall arithmetic)."""
    if type(value) is not int or value < 0 or value.bit_length() > MAX_INDEX_BITS:
        raise RefusedPickle(f"{what} {brief(value)} (expected a non-negative integer below 2**{MAX_INDEX_BITS})")
    return value


def _check_key(key: Any) -> None:
    """Dict keys and set items must be text (or small ints): others can be made to collide and stall hashing."""
    if not (type(key) is str or (type(key) is int and key.bit_length() <= 31)):
        raise RefusedPickle(f"a dict key or set item that is {brief(key)} (only text keys are read)")


def _checked_pairs(items: Any) -> list:
    pairs = list(items.items()) if isinstance(items, dict) else items
    if not isinstance(pairs, (list, tuple)):
        raise RefusedPickle(f"dict items given as {brief(items)}")
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RefusedPickle(f"a dict item that is {brief(pair)}, not a (key, value) pair")
        _check_key(pair[0])
    return list(pairs)


class _Sealed:
    """Plain-data stand-ins: the pickle may not set their state (BUILD) or attributes."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise RefusedPickle(f"the pickle sets the state of a {type(self).__name__}")


# ----------------------------------------------------------------------------------------------
# Where bytes come from: the file itself, read by position and only when used.


class _Source:
    """The pickle file: a sequential stream for the unpickler plus positioned reads for lazy data.

    The positioned handle is opened on first use and reopened if closed (records returned by
    ``read_network_pickle`` can still be read); a file whose size changed is refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream = open(path, "rb")
        self.size = os.fstat(self.stream.fileno()).st_size
        self._reader: io.BufferedReader | None = None

    def close(self) -> None:
        """Close both handles; later reads (of records kept by a caller) open the file for each read."""
        self.stream.close()
        if self._reader is not None:
            self._reader.close()

    def _open_reader(self) -> io.BufferedReader:
        reader = open(self.path, "rb")
        if os.fstat(reader.fileno()).st_size != self.size:
            reader.close()
            raise LatentmapError(f"{self.path} changed while it was being read")
        return reader

    def readinto(self, offset: int, buffer: Any) -> None:
        view = memoryview(buffer).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise LatentmapError(f"{self.path}: a read outside the file ({offset}+{len(view)} of {self.size} bytes)")
        if self.stream.closed:
            with self._open_reader() as reader:
                self._read(reader, offset, view)
            return
        if self._reader is None:
            self._reader = self._open_reader()
        self._read(self._reader, offset, view)

    def _read(self, reader: io.BufferedReader, offset: int, view: memoryview) -> None:
        reader.seek(offset)
        done = 0
        while done < len(view):
            count = reader.readinto(view[done:])
            if not count:
                raise LatentmapError(f"{self.path} ends early (was it changed while being read?)")
            done += count


class _BoundedStream:
    """An unpickler's side of a stream of ``size`` bytes: never asks for more than is left.

    (A pickle can declare a huge length for a string or bytes object, and a buffered read preallocates
    what it is asked for.) It keeps its own position: ``tell`` on a file costs a system call per opcode.
    """

    def __init__(self, handle: Any, size: int) -> None:
        self.handle, self.size, self.position = handle, size, handle.tell()

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.position
        data = self.handle.read(left if n is None or n < 0 or n > left else n)
        self.position += len(data)
        return data

    def readline(self) -> bytes:
        data = self.handle.readline()
        self.position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = self.handle.readinto(view[: max(0, self.size - self.position)])
        self.position += count
        return count

    def tell(self) -> int:
        return self.position

    def skip(self, n: int) -> None:
        self.position = self.handle.seek(n, io.SEEK_CUR)


class FileBlob(_Sealed):
    """A bytes object the pickle holds, left in the file: ``nbytes`` at ``offset``, read when used."""

    __slots__ = ("source", "offset", "nbytes")

    def __init__(self, source: _Source, offset: int, nbytes: int) -> None:
        self.source, self.offset, self.nbytes = source, offset, nbytes

    def readinto(self, start: int, buffer: Any) -> None:
        self.source.readinto(self.offset + start, buffer)

    def read(self, start: int = 0, length: int | None = None) -> bytes:
        length = self.nbytes - start if length is None else length
        buffer = bytearray(length)
        self.readinto(start, buffer)
        return bytes(buffer)


def _blob_nbytes(blob: bytes | FileBlob) -> int:
    return blob.nbytes if isinstance(blob, FileBlob) else len(blob)


def _blob_readinto(blob: bytes | FileBlob, start: int, buffer: Any) -> None:
    if isinstance(blob, FileBlob):
        blob.readinto(start, buffer)
    else:
        view = memoryview(buffer).cast("B")
        view[:] = memoryview(blob)[start : start + len(view)]


class _BlobReader(io.RawIOBase):
    """A seekable raw stream over a blob, so the storage headers inside it can be unpickled."""

    def __init__(self, blob: bytes | FileBlob) -> None:
        self.blob, self.nbytes, self.position = blob, _blob_nbytes(blob), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self.nbytes - self.position))
        _blob_readinto(self.blob, self.position, view[:count])
        self.position += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.nbytes}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position


# ----------------------------------------------------------------------------------------------
# Plain-data stand-ins for the names the allow-list resolves.


class StorageRecord(_Sealed):
    """A tensor storage: ``numel`` elements of ``dtype`` at ``byte_offset`` of a blob (not read yet)."""

    __slots__ = ("blob", "byte_offset", "numel", "dtype")

    def __init__(self, blob: Any, byte_offset: int | None, numel: int, dtype: torch.dtype) -> None:
        self.blob, self.byte_offset, self.numel, self.dtype = blob, byte_offset, numel, dtype

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def readinto(self, start: int, buffer: Any) -> None:
        """Bytes from ``start`` (relative to the storage) into ``buffer``; bounds were checked when read."""
        _blob_readinto(self.blob, self.byte_offset + start, buffer)


class TensorRecord(_Sealed):
    """A tensor as the pickle declares it (storage, offset, shape, stride), checked, not yet read."""

    __slots__ = ("storage", "offset", "shape", "stride", "numel")

    def __init__(self, storage: StorageRecord, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.numel = math.prod(shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def _is_dense(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def read_into(self, target: Tensor) -> None:
        """Copy the values into ``target`` (a CPU tensor of the same shape), reading only what they cover."""
        if self.numel == 0:
            return
        itemsize = self.dtype.itemsize
        if self.dtype == target.dtype and self.dtype != torch.bool and self._is_dense() and target.is_contiguous():
            self.storage.readinto(self.offset * itemsize, target.reshape(-1).view(torch.uint8).numpy())
            return
        span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        raw = bytearray(span * itemsize)
        self.storage.readinto(self.offset * itemsize, raw)
        if self.dtype == torch.bool:  # any non-zero byte is True; never a bool tensor holding 2
            flat = torch.frombuffer(raw, dtype=torch.uint8).ne(0)
        else:
            flat = torch.frombuffer(raw, dtype=self.dtype)
        target.copy_(flat.as_strided(self.shape, self.stride))

    def to_tensor(self) -> Tensor:
        """The tensor as a new contiguous CPU tensor (at most the bytes its storage holds)."""
        tensor = torch.empty(self.shape, dtype=self.dtype)
        self.read_into(tensor)
        return tensor


def _tensor_record(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRecord:
    if not isinstance(storage, StorageRecord):
        raise RefusedPickle(f"a tensor record whose storage is {brief(storage)}")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise RefusedPickle(f"a tensor record with size {brief(size)} / stride {brief(stride)}")
    if len(size) != len(stride) or len(size) > MAX_DIMS:
        raise RefusedPickle(f"a tensor record with {len(size)} sizes and {len(stride)} strides")
    offset = _index(offset, "a tensor record with storage offset")
    shape = tuple(_index(v, "a tensor record with size") for v in size)
    strides = tuple(_index(v, "a tensor record with stride") for v in stride)
    record = TensorRecord(storage, offset, shape, strides)
    if record.numel:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise RefusedPickle(f"a tensor record reaching element {last} of a storage of {storage.numel} (size {shape})")
        if record.numel > storage.numel - offset:
            raise RefusedPickle(
                f"a tensor record of {record.numel} elements over {storage.numel - offset} stored ones "
                f"(size {shape}, stride {strides}: repeated elements)"
            )
    return record


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> TensorRecord:
    return _tensor_record(storage, offset, size, stride)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       hooks: Any = None, dtype: Any = None, *_ignored: Any) -> TensorRecord:
    if isinstance(storage, StorageRecord) and dtype is not None and dtype != storage.dtype:
        if dtype not in TORCH_DTYPES.values() or storage.dtype != torch.uint8 or storage.numel % dtype.itemsize:
            raise RefusedPickle(f"a tensor record of dtype {brief(dtype)} over a {storage.dtype} storage")
        storage = StorageRecord(storage.blob, storage.byte_offset, storage.numel // dtype.itemsize, dtype)
    return _tensor_record(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> TensorRecord:
    if not isinstance(data, TensorRecord):
        raise RefusedPickle(f"a parameter record whose data is {brief(data)}, not a tensor")
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorRecord:
    if not any(func is f for f in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)) or not isinstance(args, tuple):
        raise RefusedPickle("a tensor-subclass record built by something other than a tensor rebuild function")
    return func(*args)


def _tensor_type_marker(*_args: Any) -> Any:
    raise RefusedPickle("a tensor class used as a constructor")


def _torch_size(values: Any = ()) -> tuple:
    if not isinstance(values, (tuple, list)) or len(values) > MAX_DIMS:
        raise RefusedPickle(f"a torch.Size of {brief(values)}")
    return tuple(_index(v, "a torch.Size entry") for v in values)


class PersistentRecord(_Sealed):
    """One ``torch_utils.persistence`` object, read as data: class name, source text (never run), state."""

    __slots__ = ("class_name", "module_src", "state", "version")

    def __init__(self, class_name: str, module_src: str, state: dict[str, Any], version: Any = None) -> None:
        self.class_name, self.module_src, self.state, self.version = class_name, module_src, state, version

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r})"

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kwargs = self.state.get("_init_kwargs", {})
        return to_plain(kwargs) if isinstance(kwargs, dict) else {}

    @property
    def init_args(self) -> tuple:
        args = self.state.get("_init_args", ())
        return tuple(to_plain(list(args))) if isinstance(args, (tuple, list)) else ()

    def tensors(self) -> dict[str, TensorRecord]:
        """All parameters and buffers under dotted names, like ``nn.Module.state_dict()``.

        Each record (and each of its dicts) is visited once: a module record reached twice (shared or
        cyclic modules) or nested deeper than ``MAX_RECORD_DEPTH`` is refused, so the walk is linear.
        """
        out: dict[str, TensorRecord] = {}
        seen: set[int] = set()
        pending: list[tuple[PersistentRecord, str, int]] = [(self, "", 0)]
        while pending:
            record, prefix, depth = pending.pop()
            if depth > MAX_RECORD_DEPTH:
                raise LatentmapError(f"network record {_text(prefix, 40)} is nested more than {MAX_RECORD_DEPTH} modules deep")
            state = record.state
            groups = [state.get(name) for name in ("_parameters", "_buffers", "_modules")]
            for obj in (record, state, *groups):
                if obj is not None and not isinstance(obj, (str, bool)):
                    if id(obj) in seen:
                        raise LatentmapError(
                            f"network record {_text(prefix, 40) or '(top)'} is reached twice (shared or cyclic modules are not read)"
                        )
                    seen.add(id(obj))
            skip = state.get("_non_persistent_buffers_set", None) or ()
            if not isinstance(skip, (set, frozenset, list, tuple)):
                raise LatentmapError(f"network record {prefix or '(top)'} lists non-persistent buffers as {brief(skip)}")
            for group, values in zip(("_parameters", "_buffers"), groups[:2]):
                if not isinstance(values, (dict, type(None))):
                    raise LatentmapError(f"network record {prefix}{group} is {brief(values)}, expected a dict")
                for name, value in (values or {}).items():
                    if value is None or (group == "_buffers" and name in skip):
                        continue
                    if not isinstance(value, TensorRecord):
                        raise LatentmapError(f"network record {prefix}{name} is {brief(value)}, expected a tensor")
                    out[f"{prefix}{name}"] = value
            modules = groups[2]
            if not isinstance(modules, (dict, type(None))):
                raise LatentmapError(f"network record {prefix}_modules is {brief(modules)}, expected a dict")
            children = []
            for name, child in (modules or {}).items():
                if child is None:
                    continue
                if not isinstance(child, PersistentRecord):
                    raise LatentmapError(f"network record {prefix}{name} is {brief(child)}, expected a module record")
                children.append((child, f"{prefix}{name}.", depth + 1))
            pending.extend(reversed(children))
        return out


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise RefusedPickle("a torch_utils.persistence record without the expected {type: 'class', state: {...}} layout")
    class_name, module_src = meta.get("class_name", ""), meta.get("module_src", "")
    if not isinstance(class_name, str) or not isinstance(module_src, str):
        raise RefusedPickle("a torch_utils.persistence record whose class name or source is not text")
    return PersistentRecord(class_name, module_src, meta["state"], meta.get("version"))


class EasyDict(dict):
    """``dnnlib.EasyDict`` read as a plain dict (attribute access kept for convenience)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if len(args) > 1:
            raise RefusedPickle(f"an EasyDict built from {len(args)} arguments")
        for key, value in _checked_pairs(args[0]) if args else ():
            self[key] = value
        self.update(kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _ordered_dict(items: Any = ()) -> OrderedDict:
    return OrderedDict(_checked_pairs(items))


class DtypeMarker(_Sealed):
    """A storage class such as ``torch.FloatStorage`` named inside a pickle: just its dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class DtypeRecord(_Sealed):
    """``numpy.dtype(spec, align, copy)`` read as data: the dtype comes from a plain numeric spec alone.

    numpy pickles a dtype as that call followed by ``__setstate__((version, byteorder, subarray,
    names, fields, elsize, alignment, flags[, metadata]))``. A real dtype given a hostile state can
    describe fields outside the data (reading or leaking heap memory), so the state is only checked
    (no subarray, names or fields: a plain number) and the byte order kept; no dtype is ever built
    from it.
    """

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec: str) -> None:
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise RefusedPickle(f"a numpy dtype state {brief(state)}")
        _version, byteorder, subarray, names, fields, elsize, alignment = state[:7]
        if byteorder not in ("<", ">", "|", "=") or (subarray, names, fields) != (None, None, None) \
                or type(elsize) is not int or type(alignment) is not int or (elsize, alignment) != (-1, -1):
            raise RefusedPickle(f"a structured or sized numpy dtype ({self.spec}; only plain numbers are read)")
        self.byteorder = byteorder

    @property
    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        return dtype.newbyteorder(">") if self.byteorder == ">" else dtype


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> DtypeRecord:
    if not isinstance(spec, str) or spec not in PLAIN_NUMPY_DTYPES:
        raise RefusedPickle(f"a numpy dtype {brief(spec)} (only plain numeric dtypes are read)")
    return DtypeRecord(spec)


class NumpyArrayRecord(_Sealed):
    """Receives ``ndarray.__setstate__``'s state and turns it into a real numpy array via ``value``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.value is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise RefusedPickle("a numpy array record with an unexpected state layout")
        _version, shape, dtype, fortran, raw = state if len(state) == 5 else (1, *state)
        if not isinstance(dtype, DtypeRecord):
            raise RefusedPickle(f"a numpy array whose dtype is {brief(dtype)}")
        if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS:
            raise RefusedPickle(f"a numpy array of shape {brief(shape)}")
        shape = tuple(_index(v, "a numpy array dimension") for v in shape)
        if isinstance(raw, FileBlob):
            raw = raw.read()
        if not isinstance(raw, (bytes, bytearray)):
            raise RefusedPickle(f"a numpy array whose data is {brief(raw)}, not raw bytes")
        dtype = dtype.dtype
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise RefusedPickle(f"a numpy array of shape {shape} with {len(raw)} bytes of data")
        self.value = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _numpy_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> NumpyArrayRecord:
    if cls is not NumpyArrayRecord:
        raise RefusedPickle("a numpy reconstruct call for a class other than numpy.ndarray")
    return NumpyArrayRecord()


def _numpy_scalar(dtype: Any, raw: Any = None) -> Any:
    if not isinstance(dtype, DtypeRecord) or not isinstance(raw, (bytes, bytearray)):
        raise RefusedPickle("a numpy scalar that is not a plain number")
    dtype = dtype.dtype
    if len(raw) != dtype.itemsize:
        raise RefusedPickle("a numpy scalar with the wrong number of bytes")
    return np.frombuffer(bytes(raw), dtype=dtype)[0]


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(text, 'latin1')``: allow only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle("a _codecs.encode call other than the latin1 spelling of bytes")
    return text.encode("latin1")


def _plain_set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise RefusedPickle(f"a set of {brief(items)}")
    for item in items:
        _check_key(item)
    return set(items)


def _plain_frozenset(items: Any = ()) -> frozenset:
    return frozenset(_plain_set(items))


def _numpy_names() -> dict[tuple[str, str], Any]:
    names: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(module, "_reconstruct")] = _numpy_reconstruct
        names[(module, "scalar")] = _numpy_scalar
    names[("numpy", "ndarray")] = NumpyArrayRecord
    names[("numpy", "dtype")] = _numpy_dtype
    return names


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _plain_set,
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "frozenset"): _plain_frozenset,
    ("__builtin__", "set"): _plain_set,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _tensor_type_marker,
    ("torch.nn.parameter", "Parameter"): _tensor_type_marker,
    ("torch", "Size"): _torch_size,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    **{("torch", name): dtype for name, dtype in TORCH_DTYPES.items()},
    **_numpy_names(),
}
NEWOBJ_CLASSES = (EasyDict,)  # classes the pickle may instantiate with NEWOBJ (dnnlib pickles EasyDicts so)
BUILD_CLASSES = (NumpyArrayRecord, DtypeRecord)  # the only objects whose state the pickle may set


# ----------------------------------------------------------------------------------------------
# The restricted unpicklers.


class SafeUnpickler(pickle._Unpickler):
    """Resolves only the allow-list above; refuses every other global and any persistent id.

    Python's own (pure-Python) unpickler with a few opcodes replaced, so that nothing but our
    stand-ins is ever instantiated or given state, dict keys and set items are text, and large
    bytes objects outside a frame stay in the file (``FileBlob``) when a ``source`` is given.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, source: _Source | None = None) -> None:
        super().__init__(file)
        self.source = source
        self.stream = file

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            pass
        if module == "torch.storage" and name == "_load_from_bytes":
            return load_storage_bytes
        raise RefusedPickle(f"the pickle asks for '{_text(module)}.{_text(name)}', which is not a tensor or plain container")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("the pickle uses persistent ids outside a tensor storage")

    # -- opcodes replaced ------------------------------------------------------------------------

    def _frame_left(self) -> int:
        frame = self._unframer.current_frame
        if not frame:
            return 0
        position = frame.tell()
        left = frame.seek(0, io.SEEK_END) - position
        frame.seek(position)
        return left

    def _counted_bytes(self, width: int, fmt: str) -> Any:
        (length,) = struct.unpack(fmt, self.read(width))
        if length >= LAZY_MIN_BYTES and self.source is not None and self._frame_left() == 0:
            offset = self.stream.tell()
            if offset + length > self.source.size:
                raise EOFError(f"a {length}-byte object runs past the end of the file")
            self.stream.skip(length)
            return FileBlob(self.source, offset, length)
        data = self.read(length)
        if len(data) != length:
            raise EOFError(f"a {length}-byte object runs past the end of the data")
        return data

    def load_binbytes(self) -> None:
        self.append(self._counted_bytes(4, "<I"))

    def load_binbytes8(self) -> None:
        self.append(self._counted_bytes(8, "<Q"))

    def load_bytearray8(self) -> None:
        data = self._counted_bytes(8, "<Q")
        self.append(bytearray(data.read() if isinstance(data, FileBlob) else data))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) not in BUILD_CLASSES:
            raise RefusedPickle(f"the pickle sets the state of {brief(inst)} (only numpy arrays and dtypes take state)")
        inst.__setstate__(state)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not any(cls is allowed for allowed in NEWOBJ_CLASSES) or type(args) is not tuple or args:
            raise RefusedPickle(f"the pickle instantiates {brief(cls)} (only EasyDict, with no arguments)")
        self.append(cls())

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        if type(kwargs) is not dict or kwargs:
            raise RefusedPickle("the pickle instantiates a class with keyword arguments")
        self.load_newobj()

    def load_refused(self) -> None:
        raise RefusedPickle("the pickle uses an extension code or builds an object from a class (INST/OBJ)")

    def load_dict(self) -> None:
        items = self.pop_mark()
        self.append(dict(_checked_pairs(list(zip(items[::2], items[1::2])))))

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items([key, value])

    def load_setitems(self) -> None:
        self._set_items(self.pop_mark())

    def _set_items(self, items: list) -> None:
        target = self.stack[-1]
        if not isinstance(target, dict) or len(items) % 2:
            raise RefusedPickle(f"the pickle sets items of {brief(target)}")
        for key, value in _checked_pairs(list(zip(items[::2], items[1::2]))):
            target[key] = value

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise RefusedPickle(f"the pickle adds set items to {brief(target)}")
        target.update(_plain_set(items))

    def load_frozenset(self) -> None:
        self.append(_plain_frozenset(self.pop_mark()))

    for _opcode, _method in (
        (pickle.BINBYTES, load_binbytes), (pickle.BINBYTES8, load_binbytes8), (pickle.BYTEARRAY8, load_bytearray8),
        (pickle.BUILD, load_build), (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.INST, load_refused), (pickle.OBJ, load_refused), (pickle.EXT1, load_refused),
        (pickle.EXT2, load_refused), (pickle.EXT4, load_refused), (pickle.DICT, load_dict),
        (pickle.SETITEM, load_setitem), (pickle.SETITEMS, load_setitems), (pickle.ADDITEMS, load_additems),
        (pickle.FROZENSET, load_frozenset),
    ):
        dispatch[_opcode[0]] = _method
    del _opcode, _method


class _StorageUnpickler(SafeUnpickler):
    """Reads the little torch.save stream torch embeds for each storage; storages are persistent ids.

    Only storage classes are named inside it (no further ``_load_from_bytes``: no nesting).
    """

    def __init__(self, file: Any, nbytes: int) -> None:
        super().__init__(file)
        self.storages: dict[str, StorageRecord] = {}
        self.views: list[tuple[StorageRecord, StorageRecord, int]] = []
        self.bytes_left = nbytes  # a storage cannot declare more data than its blob holds

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return DtypeMarker(STORAGE_DTYPES[name])
        if module == "torch" and name == "UntypedStorage":
            return DtypeMarker(torch.uint8)
        raise RefusedPickle(f"a tensor storage that asks for '{_text(module)}.{_text(name)}'")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], DtypeMarker)):
            raise RefusedPickle(f"an unexpected storage record {brief(pid)}")
        dtype, key = pid[1].dtype, pid[2]
        numel = _index(pid[4], "a storage record with element count")
        if type(key) is not str:
            raise RefusedPickle(f"a storage record keyed by {brief(key)}")
        if key not in self.storages:
            self.bytes_left -= numel * dtype.itemsize
            if self.bytes_left < 0:
                raise RefusedPickle(f"a storage record declaring {numel} elements, more than its data holds")
            self.storages[key] = StorageRecord(None, None, numel, dtype)
        storage = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return storage
        if not isinstance(view, tuple) or len(view) != 3:
            raise RefusedPickle(f"a storage view {brief(view)}")
        start = _index(view[1], "a storage view offset")
        count = _index(view[2], "a storage view size")
        if start + count > storage.numel:
            raise RefusedPickle(f"a storage view of {count} elements at {start} of a storage of {storage.numel}")
        result = StorageRecord(None, None, count, storage.dtype)
        self.views.append((result, storage, start))
        return result


def load_storage_bytes(data: Any) -> StorageRecord:
    """A storage that torch pickled as ``torch.save`` bytes (legacy stream or zip): where its data lies."""
    if isinstance(data, bytearray):
        data = bytes(data)
    if not isinstance(data, (bytes, FileBlob)):
        raise RefusedPickle(f"a tensor storage whose data is {brief(data)}, not bytes")
    head = data.read(0, min(2, data.nbytes)) if isinstance(data, FileBlob) else data[:2]
    if head == b"PK":
        return _load_zip_storage(data.read() if isinstance(data, FileBlob) else data)
    return _load_legacy_storage(data)


def _load_legacy_storage(blob: bytes | FileBlob) -> StorageRecord:
    nbytes = _blob_nbytes(blob)
    stream = _BoundedStream(io.BufferedReader(_BlobReader(blob), buffer_size=4096), nbytes)
    unpickler = _StorageUnpickler(stream, nbytes)
    if unpickler.load() != LEGACY_TORCH_MAGIC:
        raise RefusedPickle("a tensor storage that is not in torch's serialisation format")
    unpickler.load()  # protocol version
    sys_info = unpickler.load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian", True) is not True:
        raise RefusedPickle("a big-endian tensor storage")
    result = unpickler.load()
    keys = unpickler.load()
    if not isinstance(keys, list) or len(keys) != len(unpickler.storages):
        raise RefusedPickle("a tensor storage without its key list")
    for key in keys:
        storage = unpickler.storages.get(key) if type(key) is str else None
        if storage is None or storage.blob is not None:
            raise RefusedPickle(f"a tensor storage key {brief(key)} that no record uses")
        header = stream.read(8)
        if len(header) != 8:
            raise EOFError("tensor storage data ends early")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise RefusedPickle(f"a tensor storage declaring {storage.numel} elements but holding {numel}")
        start = stream.tell()
        if start + storage.nbytes > nbytes:
            raise EOFError("tensor storage data ends early")
        storage.blob, storage.byte_offset = blob, start
        stream.skip(storage.nbytes)
    for view, base, start in unpickler.views:
        view.blob, view.byte_offset = base.blob, base.byte_offset + start * base.dtype.itemsize
    if not isinstance(result, StorageRecord):
        raise RefusedPickle("a tensor storage record that does not hold a storage")
    return result


def _load_zip_storage(data: bytes) -> StorageRecord:
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
        raise RefusedPickle("a zipped tensor storage without data.pkl")
    root = pkl[: -len("data.pkl")]

    def entry(name: str, nbytes: int | None = None) -> bytes:
        info = archive.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
            raise RefusedPickle(f"a zipped tensor storage with a compressed or oversized entry {brief(name)}")
        if nbytes is not None and info.file_size != nbytes:
            raise RefusedPickle(f"zipped storage {brief(name)} holds {info.file_size} bytes, expected {nbytes}")
        return archive.read(name)

    pickled = entry(pkl)
    unpickler = _StorageUnpickler(_BoundedStream(io.BytesIO(pickled), len(pickled)), len(data))
    result = unpickler.load()
    for key, storage in unpickler.storages.items():
        storage.blob, storage.byte_offset = entry(f"{root}data/{key}", storage.nbytes), 0
    for view, base, start in unpickler.views:
        view.blob, view.byte_offset = base.blob, start * base.dtype.itemsize
    if not isinstance(result, StorageRecord):
        raise RefusedPickle("a zipped tensor storage record that does not hold a storage")
    return result


# ----------------------------------------------------------------------------------------------
# Converting what was read into plain Python.


def to_plain(value: Any, *, limit: int = MAX_PLAIN_VALUES, max_depth: int = MAX_PLAIN_DEPTH) -> Any:
    """Records' kwargs as JSON-ready Python: EasyDicts -> dicts, numpy arrays/scalars -> lists/numbers.

    Each object is converted once (memoised by identity), so shared references cost nothing to walk;
    the result may share them too, but its size *as a tree* (what ``json.dumps`` writes) is bounded by
    ``limit`` values. Cycles, nesting deeper than ``max_depth``, integers beyond 64 bits and values
    other than numbers, text, lists and dicts are refused with one line.
    """
    memo: dict[int, tuple[Any, int]] = {}
    active: set[int] = set()

    def convert(item: Any, depth: int) -> tuple[Any, int]:
        if depth > max_depth:
            raise LatentmapError(f"constructor kwargs are nested more than {max_depth} levels deep")
        if item is None or isinstance(item, (bool, float, str)):
            return item, 1
        if isinstance(item, int):
            if item.bit_length() > 64:
                raise LatentmapError(f"constructor kwargs hold {brief(item)}")
            return item, 1
        if isinstance(item, np.generic):
            if item.dtype.kind not in "biuf":
                raise LatentmapError(f"constructor kwargs hold a numpy {item.dtype} value")
            return item.item(), 1
        key = id(item)
        if key in memo:
            return memo[key]
        if key in active:
            raise LatentmapError("constructor kwargs refer to themselves (a cycle)")
        active.add(key)
        if isinstance(item, NumpyArrayRecord):
            item = item.value
        if isinstance(item, np.ndarray):
            if item.size > limit:
                raise LatentmapError(f"constructor kwargs hold a numpy array of {item.size} values")
            result, size = item.tolist(), item.size + 1
        elif isinstance(item, dict):
            result, size = {}, 1
            for k, v in item.items():
                result[str(k)], count = convert(v, depth + 1)
                size += count
                if size > limit:
                    break
        elif isinstance(item, (list, tuple)):
            result, size = [], 1
            for v in item:
                converted, count = convert(v, depth + 1)
                result.append(converted)
                size += count
                if size > limit:
                    break
        else:
            raise LatentmapError(f"constructor kwargs hold {brief(item)} (only numbers, text, lists and dicts are read)")
        if size > limit:
            raise LatentmapError(f"constructor kwargs hold more than {limit} values (counting shared ones each time)")
        active.discard(key)
        memo[key] = (result, size)
        return result, size

    return convert(value, 0)[0]


def _first_line(exc: BaseException) -> str:
    """An exception's message, first line, shortened; '' when it has none or its str() fails."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a hostile value whose str() fails (e.g. a huge integer)
        return ""
    return text.splitlines()[0][:200] if text else ""


def _read_error(file: Path, exc: BaseException) -> LatentmapError:
    """The one line for an exception raised while reading an untrusted file (KeyError: an unknown opcode)."""
    text = _first_line(exc)
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, RefusedPickle):
        return LatentmapError(f"refusing to load {file}: {text}; nothing from it was executed")
    if isinstance(exc, (EOFError, pickle.UnpicklingError, struct.error, zipfile.BadZipFile, KeyError)):
        return LatentmapError(f"{file} is truncated or corrupt ({detail})")
    if isinstance(exc, MemoryError):
        return LatentmapError(f"{file}: not enough memory to read it ({detail})")
    return LatentmapError(f"{file} is not a readable network pickle ({detail})")


def _open(path: str | Path) -> tuple[Path, _Source]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise LatentmapError(f"network pickle {file} does not exist")
    source = _Source(file)
    head = source.stream.read(4)
    source.stream.seek(0)
    if head[:2] == b"PK":
        source.close()
        raise LatentmapError(f"{file} is a zip archive (a torch.save checkpoint?), not an NVIDIA network pickle (.pkl)")
    if not head or head[0] != PICKLE_PROTOCOL_BYTE:
        source.close()
        raise LatentmapError(f"{file} is not a Python pickle (expected an NVIDIA network .pkl, protocol 2 or later)")
    return file, source


def _unpickle(file: Path, source: _Source) -> dict[str, Any]:
    try:
        data = SafeUnpickler(_BoundedStream(source.stream, source.size), source).load()
    except LatentmapError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile bytes can trip any error; each becomes one line
        raise _read_error(file, exc) from None
    if isinstance(data, NumpyArrayRecord):
        data = data.value
    if not isinstance(data, dict):
        raise LatentmapError(f"{file} holds {brief(data)}, expected NVIDIA's dict of networks (G, D, G_ema)")
    return data


def read_network_pickle(path: str | Path) -> dict[str, Any]:
    """The top-level dict of an NVIDIA network pickle, read safely (no code from the file runs).

    Tensors are ``TensorRecord``s (``.to_tensor()`` reads one); large storages are read from the
    file only then. One-line ``LatentmapError`` for a missing file, a file that is not a pickle, a
    truncated or corrupt pickle, and a pickle that asks for anything but tensors and plain containers.
    """
    file, source = _open(path)
    try:
        return _unpickle(file, source)
    finally:
        source.close()


# ----------------------------------------------------------------------------------------------
# From a record to our network.


def network_kind(record: PersistentRecord) -> str:
    """'stylegan2' or 'stylegan3' from the record's class name and (never executed) module source."""
    src = record.module_src
    if record.class_name != "Generator":
        raise LatentmapError(f"the network is a {brief(record.class_name or 'nameless record')}, not a StyleGAN generator")
    if "class SynthesisInput" in src or "filtered_lrelu" in src:
        return "stylegan3"
    if "class SynthesisBlock" in src or "class ToRGBLayer" in src:
        return "stylegan2"
    raise LatentmapError("the Generator record's source matches neither StyleGAN2 nor StyleGAN3")


def pick_network(contents: dict[str, Any], key: str, source: str) -> PersistentRecord:
    """The record under ``key`` (``G_ema`` by default) with a clear error when it is absent."""
    record = contents.get(key)
    if record is None:
        networks = [str(k) for k, v in contents.items() if isinstance(v, PersistentRecord)]
        raise LatentmapError(f"{source} has no {key!r} network (it holds: {', '.join(networks) or 'no networks'})")
    if not isinstance(record, PersistentRecord):
        raise LatentmapError(f"{source}: {key!r} is {brief(record)}, not a network record")
    return record


def check_stored_bytes(tensors: Mapping[str, TensorRecord], source: str) -> None:
    """The tensors viewing each stored blob may not declare more bytes, together, than that blob holds.

    Each tensor record is already within its storage; this also bounds tensors that view the same
    storage again and again (a network of repeated views of a few bytes): the network's tensors
    then total at most the bytes stored.
    """
    declared: dict[int, int] = {}
    blobs: dict[int, Any] = {}
    for tensor in tensors.values():
        key = id(tensor.storage.blob)
        blobs[key] = tensor.storage.blob
        declared[key] = declared.get(key, 0) + tensor.nbytes
    for key, nbytes in declared.items():
        if nbytes > _blob_nbytes(blobs[key]):
            raise LatentmapError(
                f"{source}: the network's tensors declare {nbytes} bytes over {_blob_nbytes(blobs[key])} bytes of "
                f"stored data (tensors that repeat or share storage are not read)"
            )


def _network_class(kind: str, source: str) -> type[torch.nn.Module]:
    if kind == "stylegan2":
        from latentmap_stylegan.stylegan2 import StyleGAN2Generator

        return StyleGAN2Generator
    if kind == "stylegan3":
        from latentmap_stylegan.stylegan3 import StyleGAN3Generator

        return StyleGAN3Generator
    raise LatentmapError(f"{source}: unknown network class {kind!r} (expected stylegan2 or stylegan3)")


def check_constructor_work(kind: str, init_kwargs: dict[str, Any], shapes: Mapping[str, tuple[int, ...]],
                           source: str) -> None:
    """Refuse kwargs whose constructor would loop or compute beyond what the file stores.

    The constructor's Python loops run once per mapping layer, per resolution and per StyleGAN3
    layer, StyleGAN2 turns ``resample_filter`` into a taps x taps filter, and StyleGAN3 designs its
    filters with numpy (up to taps x taps values). Each loop count may not exceed the number of
    stored tensors (every layer stores some), no kwargs list may be longer than ``MAX_KWARGS_LIST``
    and no filter larger than the number of stored values.
    """
    tensors, values = len(shapes), sum(math.prod(shape) for shape in shapes.values())
    mapping = init_kwargs.get("mapping_kwargs") or {}
    counts = {"mapping_kwargs.num_layers": mapping.get("num_layers", 8) if isinstance(mapping, dict) else 0}
    resolution = init_kwargs.get("img_resolution")
    if isinstance(resolution, (int, float)) and not isinstance(resolution, bool) and resolution > 0:
        counts["log2(img_resolution)"] = math.log2(resolution)
    if kind == "stylegan3":
        counts["num_layers"] = init_kwargs.get("num_layers", 14)
    for name, count in counts.items():
        if isinstance(count, (int, float)) and not count <= tensors:
            raise LatentmapError(f"{source}: constructor kwarg {name} = {brief(count)} describes more layers "
                                 f"than the {tensors} tensors stored")
    pending = list(init_kwargs.values())
    while pending:  # to_plain made the kwargs a bounded tree
        item = pending.pop()
        if isinstance(item, (list, dict)):
            if len(item) > MAX_KWARGS_LIST:
                raise LatentmapError(f"{source}: constructor kwargs hold a list of {len(item)} entries "
                                     f"(at most {MAX_KWARGS_LIST})")
            pending.extend(item.values() if isinstance(item, dict) else item)
    if kind != "stylegan3":
        return
    from latentmap_stylegan.sg3_schedule import derive_schedule
    from latentmap_stylegan.stylegan3 import _SCHEDULE_KWARGS

    try:
        with np.errstate(all="ignore"):
            schedule = derive_schedule(init_kwargs["img_resolution"], init_kwargs["img_channels"],
                                       **{k: v for k, v in init_kwargs.items() if k in _SCHEDULE_KWARGS})
    except Exception as exc:  # noqa: BLE001 - hostile kwargs; the message names the problem
        raise _kwargs_error(kind, exc, source) from None
    for layer in schedule.layers:
        for taps, radial in ((layer.up_taps, False), (layer.down_taps, layer.down_radial)):
            if taps * (taps if radial else 1) > values:
                raise LatentmapError(f"{source}: constructor kwargs give layer {layer.name} a {taps}-tap filter, "
                                     f"more than the {values} values stored")


def _kwargs_error(kind: str, exc: BaseException, source: str) -> LatentmapError:
    text = _first_line(exc) or type(exc).__name__
    return LatentmapError(f"{source}: cannot build {kind} from its constructor kwargs ({text})")


class _ConstructionBudget(TorchFunctionMode):
    """While our network is constructed: no random initialisation, and a bound on the bytes allocated.

    Every tensor of the network is overwritten by the file's, so ``randn`` / ``rand`` give
    uninitialised memory (construction costs no more than the allocation). Factory functions are
    charged before they allocate, other functions for the new (non-view) tensors they return; past
    ``budget`` bytes in all, construction stops with one line. The meta device would avoid the
    allocation altogether, but its first use imports ~900 modules (seconds).
    """

    def __init__(self, budget: int, source: str) -> None:
        super().__init__()
        self.budget, self.source, self.spent = budget, source, 0

    def charge(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > self.budget:
            raise LatentmapError(
                f"{self.source}: the constructor kwargs describe a network larger than the tensors stored "
                f"(over {self.budget} bytes; the file holds less)"
            )

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES:
            sizes = args[0] if args and isinstance(args[0], (tuple, list)) else args
            if func is torch.full:
                sizes = args[0] if args else kwargs.get("size", ())
            elif func is torch.eye:
                sizes = (args[0], args[1] if len(args) > 1 else args[0]) if args else ()
            elif "size" in kwargs:
                sizes = kwargs["size"]
            if all(type(n) is int for n in sizes):
                dtype = kwargs.get("dtype") or torch.get_default_dtype()
                self.charge(max(0, math.prod(sizes)) * dtype.itemsize)
            if func in (torch.randn, torch.rand):
                kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
                return torch.empty(*args, **kwargs)
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        for item in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(item, Tensor) and item._base is None:
                self.charge(item.numel() * item.element_size())
        return result


_FACTORIES = frozenset({torch.randn, torch.rand, torch.empty, torch.zeros, torch.ones, torch.full, torch.eye})


def build_network(kind: str, init_kwargs: dict[str, Any], source: str,
                  shapes: Mapping[str, tuple[int, ...]]) -> torch.nn.Module:
    """Our generator for ``init_kwargs``, uninitialised, if it matches the stored tensor ``shapes``.

    Before anything is allocated, ``check_constructor_work`` bounds the constructor's loops; the
    construction itself may allocate at most twice the bytes of ``shapes`` (plus
    ``CONSTRUCTION_SLACK``). Then its tensors are compared with ``shapes``: every key present, none
    extra, every shape equal. The caller fills every tensor (``fill_network``). Bad kwargs, a
    mismatch and a failed allocation are each one line.
    """
    network_class = _network_class(kind, source)
    check_constructor_work(kind, init_kwargs, shapes, source)
    budget = 2 * torch.get_default_dtype().itemsize * sum(math.prod(shape) for shape in shapes.values()) + CONSTRUCTION_SLACK
    try:
        with _ConstructionBudget(budget, source), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            network = network_class(**init_kwargs)
    except LatentmapError:
        raise
    except Exception as exc:  # noqa: BLE001 - the kwargs come from the file; any failure is one line
        if isinstance(exc, MemoryError) or "can't allocate memory" in _first_line(exc):
            raise LatentmapError(f"{source}: not enough memory to build the network its kwargs describe "
                                 f"({budget // 2**20} MiB at most)") from None
        raise _kwargs_error(kind, exc, source) from None
    expected = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    extra = [k for k in shapes if k not in expected]
    if missing:
        raise LatentmapError(f"{source}: missing {len(missing)} weight(s), first {missing[0]!r} (kwargs and weights disagree?)")
    if extra:
        raise LatentmapError(f"{source}: {len(extra)} unexpected weight(s), first {extra[0]!r} (kwargs and weights disagree?)")
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            raise LatentmapError(
                f"{source}: weight {name!r} has shape {tuple(shape)} but the constructor kwargs give {expected[name]}"
            )
    return network


def fill_network(network: torch.nn.Module, read: Callable[[str, Tensor], None]) -> torch.nn.Module:
    """Fill every tensor of a ``build_network`` result with ``read(name, target)``; eval mode, no grads."""
    with torch.no_grad():
        for name, target in network.state_dict().items():
            read(name, target)
    return network.eval().requires_grad_(False)


@dataclass
class LoadedNetwork:
    """A network built from a pickle plus what identifies it."""

    network: torch.nn.Module
    kind: str
    init_kwargs: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


def load_network_pickle(path: str | Path, key: str = "G_ema") -> LoadedNetwork:
    """Build our generator from an NVIDIA network pickle (``G_ema`` by default, or ``G``), safely.

    Only the chosen network's weights are read from the file; peak memory is that network plus the
    small objects of the pickle. Every failure is one ``LatentmapError`` line.
    """
    source = str(path)
    file, handle = _open(path)
    try:
        contents = _unpickle(file, handle)
        record = pick_network(contents, key, source)
        kind = network_kind(record)
        if record.init_args:
            raise LatentmapError(f"{source}: {key!r} was built with positional arguments, expected keyword arguments only")
        try:
            init_kwargs = record.init_kwargs
            tensors = record.tensors()
        except LatentmapError as exc:
            raise LatentmapError(f"{source}: {exc}") from None
        check_stored_bytes(tensors, source)
        network = build_network(kind, init_kwargs, source, {name: t.shape for name, t in tensors.items()})
        network = fill_network(network, lambda name, target: tensors[name].read_into(target))
    except LatentmapError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile data; one line, with the error's type for a bug report
        raise _read_error(file, exc) from None
    finally:
        handle.close()
    return LoadedNetwork(network=network, kind=kind, init_kwargs=init_kwargs)
