"""Reading NVIDIA's StyleGAN network pickles without executing anything from the file.

NVIDIA's ``.pkl`` files (stylegan2-ada-pytorch, stylegan3) are a dict such as ``{"G": ..., "D": ...,
"G_ema": ..., "training_set_kwargs": ..., "augment_pipe": ...}`` whose networks are
``torch_utils.persistence`` records: ``_reconstruct_persistent_obj(meta)`` with ``meta = {"type":
"class", "version": ..., "module_src": <python source>, "class_name": ..., "state": <the module's
__dict__>}``. NVIDIA's loader *executes* ``module_src``; this one never does. It reads the
record as data: the constructor keyword arguments (``state["_init_kwargs"]``) and the parameters
and buffers by name (``_parameters`` / ``_buffers`` / ``_modules``, recursively), then builds our
own network from the kwargs and loads those tensors into it strictly.

The unpickler resolves only an allow-list of names, each to a function written here that builds
plain data: tensors (``torch._utils._rebuild_tensor_v2`` and friends, with storages parsed from
the bytes torch embeds), numpy arrays and scalars (``numpy.core`` and ``numpy._core`` spellings),
``OrderedDict``, ``set``, ``dnnlib``'s ``EasyDict`` (as a plain dict) and persistence records.
Anything else -- ``os.system``, ``builtins.eval``, any class -- is refused before it is called.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from latentmap import LatentmapError

PICKLE_PROTOCOL_BYTE = 0x80
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
NETWORK_KEYS = ("G_ema", "G", "D")

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


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asked for something other than tensors and plain containers."""


# ----------------------------------------------------------------------------------------------
# Plain-data stand-ins for the names the allow-list resolves.


@dataclass
class PersistentRecord:
    """One ``torch_utils.persistence`` object, read as data: class name, source text (never run), state."""

    class_name: str
    module_src: str
    state: dict[str, Any]
    version: int | None = None

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kwargs = self.state.get("_init_kwargs", {})
        return to_plain(kwargs) if isinstance(kwargs, dict) else {}

    @property
    def init_args(self) -> tuple:
        args = self.state.get("_init_args", ())
        return tuple(to_plain(list(args))) if isinstance(args, (tuple, list)) else ()

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """All parameters and buffers under dotted names, like ``nn.Module.state_dict()``."""
        out: dict[str, Tensor] = {}
        skip = set(self.state.get("_non_persistent_buffers_set", None) or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, Tensor):
                    raise LatentmapError(f"network record {prefix}{name!s} is a {type(value).__name__}, expected a tensor")
                out[f"{prefix}{name}"] = value
        for name, child in (self.state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistentRecord):
                raise LatentmapError(f"network record {prefix}{name} is a {type(child).__name__}, expected a module record")
            out.update(child.tensors(f"{prefix}{name}."))
        return out


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise RefusedPickle("a torch_utils.persistence record without the expected {type: 'class', state: {...}} layout")
    return PersistentRecord(
        class_name=str(meta.get("class_name", "")),
        module_src=str(meta.get("module_src", "")),
        state=meta["state"],
        version=meta.get("version"),
    )


class EasyDict(dict):
    """``dnnlib.EasyDict`` read as a plain dict (attribute access kept for convenience)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class DtypeMarker:
    """A storage class such as ``torch.FloatStorage`` named inside a pickle: just its dtype."""

    dtype: torch.dtype


def _check_tensor_args(storage: Any, offset: Any, size: Any, stride: Any) -> Tensor:
    if not isinstance(storage, Tensor) or storage.ndim != 1 or storage.storage_offset() != 0:
        raise RefusedPickle("a tensor record whose storage is not a tensor storage")
    if not isinstance(offset, int) or offset < 0:
        raise RefusedPickle(f"a tensor record with storage offset {offset!r}")
    if not all(isinstance(v, int) and v >= 0 for v in (*size, *stride)) or len(size) != len(stride):
        raise RefusedPickle(f"a tensor record with size {size!r} / stride {stride!r}")
    if all(s > 0 for s in size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel():
            raise RefusedPickle(
                f"a tensor record reaching element {last} of a storage of {storage.numel()} (size {tuple(size)})"
            )
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> Tensor:
    storage = _check_tensor_args(storage, offset, tuple(size), tuple(stride))
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       hooks: Any = None, dtype: Any = None, *_ignored: Any) -> Tensor:
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Tensor:
    if not isinstance(data, Tensor):
        raise RefusedPickle("a parameter record whose data is not a tensor")
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Tensor:
    if func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter) or not isinstance(args, tuple):
        raise RefusedPickle("a tensor-subclass record built by something other than a tensor rebuild function")
    return func(*args)


def _tensor_type_marker(*_args: Any) -> Any:
    raise RefusedPickle("a tensor class used as a constructor")


def _torch_size(values: Any = ()) -> tuple:
    return tuple(int(v) for v in values)


def _numpy_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> "NumpyArrayRecord":
    if cls is not NumpyArrayRecord:
        raise RefusedPickle("a numpy reconstruct call for a class other than numpy.ndarray")
    return NumpyArrayRecord()


class NumpyArrayRecord:
    """Receives ``ndarray.__setstate__``'s state and turns it into a real numpy array via ``value``."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise RefusedPickle("a numpy array record with an unexpected state layout")
        _version, shape, dtype, fortran, raw = state if len(state) == 5 else (1, *state)
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise RefusedPickle(f"a numpy array of dtype {dtype!r} (only numeric arrays are read)")
        if not isinstance(raw, (bytes, bytearray)):
            raise RefusedPickle("a numpy array whose data is not raw bytes")
        count = int(np.prod(shape)) if len(shape) else 1
        if count * dtype.itemsize != len(raw):
            raise RefusedPickle(f"a numpy array of shape {tuple(shape)} with {len(raw)} bytes of data")
        self.value = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, str):
        raise RefusedPickle(f"a numpy dtype spec {spec!r}")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject:
        raise RefusedPickle("a numpy object dtype")
    return dtype


def _numpy_scalar(dtype: Any, raw: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, bytearray)):
        raise RefusedPickle("a numpy scalar that is not a plain number")
    if len(raw) != dtype.itemsize:
        raise RefusedPickle("a numpy scalar with the wrong number of bytes")
    return np.frombuffer(bytes(raw), dtype=dtype)[0]


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(text, 'latin1')``: allow only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle("a _codecs.encode call other than the latin1 spelling of bytes")
    return text.encode("latin1")


def _plain_set(items: Any = ()) -> set:
    return set(items)


def _plain_frozenset(items: Any = ()) -> frozenset:
    return frozenset(items)


def _numpy_names() -> dict[tuple[str, str], Any]:
    names: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(module, "_reconstruct")] = _numpy_reconstruct
        names[(module, "scalar")] = _numpy_scalar
    names[("numpy", "ndarray")] = NumpyArrayRecord
    names[("numpy", "dtype")] = _numpy_dtype
    return names


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
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


# ----------------------------------------------------------------------------------------------
# The restricted unpicklers.


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the allow-list above; refuses every other global and any persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            pass
        if module == "torch.storage" and name == "_load_from_bytes":
            return load_storage_bytes
        raise RefusedPickle(f"the pickle asks for '{module}.{name}', which is not a tensor or plain container")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("the pickle uses persistent ids outside a tensor storage")


class _StorageUnpickler(SafeUnpickler):
    """Reads the little torch.save stream torch embeds for each storage; storages are persistent ids."""

    def __init__(self, file: Any, storages: dict[str, Tensor] | None = None,
                 reader: Callable[[str, torch.dtype, int], Tensor] | None = None, max_bytes: int = 0) -> None:
        super().__init__(file)
        self.storages = storages if storages is not None else {}
        self.reader = reader
        self.bytes_left = max_bytes  # a storage cannot declare more data than the stream holds

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return DtypeMarker(STORAGE_DTYPES[name])
        if module == "torch" and name == "UntypedStorage":
            return DtypeMarker(torch.uint8)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], DtypeMarker)):
            raise RefusedPickle(f"an unexpected storage record {str(pid)[:80]!r}")
        dtype, key, numel = pid[1].dtype, str(pid[2]), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise RefusedPickle(f"a storage record with {numel!r} elements")
        if key not in self.storages:
            self.bytes_left -= numel * torch.empty(0, dtype=dtype).element_size()
            if self.bytes_left < 0:
                raise RefusedPickle(f"a storage record declaring {numel} elements, more than its data holds")
            if self.reader is not None:
                self.storages[key] = self.reader(key, dtype, numel)
            else:  # legacy format: data comes after the pickles; fill in later
                self.storages[key] = torch.empty(numel, dtype=dtype)
        storage = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            _view_key, view_offset, view_size = view
            return storage[int(view_offset) : int(view_offset) + int(view_size)].clone()
        return storage


def load_storage_bytes(data: Any) -> Tensor:
    """A storage that torch pickled as ``torch.save`` bytes (legacy stream or zip), as a 1-D tensor."""
    if not isinstance(data, (bytes, bytearray)):
        raise RefusedPickle("a tensor storage whose data is not bytes")
    data = bytes(data)
    if data[:2] == b"PK":
        return _load_zip_storage(data)
    return _load_legacy_storage(data)


def _load_legacy_storage(data: bytes) -> Tensor:
    stream = io.BytesIO(data)
    magic = SafeUnpickler(stream).load()
    if magic != LEGACY_TORCH_MAGIC:
        raise RefusedPickle("a tensor storage that is not in torch's serialisation format")
    SafeUnpickler(stream).load()  # protocol version
    sys_info = SafeUnpickler(stream).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise RefusedPickle("a big-endian tensor storage")
    storages: dict[str, Tensor] = {}
    result = _StorageUnpickler(stream, storages, max_bytes=len(data)).load()
    keys = SafeUnpickler(stream).load()
    if not isinstance(keys, list):
        raise RefusedPickle("a tensor storage without its key list")
    for key in keys:
        target = storages.get(str(key))
        if target is None:
            raise RefusedPickle(f"a tensor storage key {key!r} that no record uses")
        header = stream.read(8)
        if len(header) != 8:
            raise EOFError("tensor storage data ends early")
        (numel,) = struct.unpack("<q", header)
        itemsize = target.element_size()
        if numel != target.numel():
            raise RefusedPickle(f"a tensor storage declaring {target.numel()} elements but holding {numel}")
        raw = stream.read(numel * itemsize)
        if len(raw) != numel * itemsize:
            raise EOFError("tensor storage data ends early")
        if numel:
            target.copy_(torch.frombuffer(bytearray(raw), dtype=target.dtype))
    if not isinstance(result, Tensor):
        raise RefusedPickle("a tensor storage record that does not hold a storage")
    return result


def _load_zip_storage(data: bytes) -> Tensor:
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
        raise RefusedPickle("a zipped tensor storage without data.pkl")
    root = pkl[: -len("data.pkl")]

    def read(key: str, dtype: torch.dtype, numel: int) -> Tensor:
        raw = archive.read(f"{root}data/{key}")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if len(raw) != numel * itemsize:
            raise RefusedPickle(f"zipped storage {key} holds {len(raw)} bytes, expected {numel * itemsize}")
        return torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)

    total = sum(info.file_size for info in archive.infolist())
    result = _StorageUnpickler(io.BytesIO(archive.read(pkl)), reader=read, max_bytes=total).load()
    if not isinstance(result, Tensor):
        raise RefusedPickle("a zipped tensor storage record that does not hold a storage")
    return result


# ----------------------------------------------------------------------------------------------
# Converting what was read into plain Python.


def to_plain(value: Any) -> Any:
    """Records' kwargs as JSON-ready Python: EasyDicts -> dicts, numpy arrays/scalars -> lists/numbers."""
    if isinstance(value, NumpyArrayRecord):
        return to_plain(value.value.tolist()) if value.value is not None else None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def read_network_pickle(path: str | Path) -> dict[str, Any]:
    """The top-level dict of an NVIDIA network pickle, read safely (no code from the file runs).

    One-line ``LatentmapError`` for a missing file, a file that is not a pickle, a truncated or
    corrupt pickle, and a pickle that asks for anything but tensors and plain containers.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise LatentmapError(f"network pickle {file} does not exist")
    with open(file, "rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        if head[:2] == b"PK":
            raise LatentmapError(
                f"{file} is a zip archive (a torch.save checkpoint?), not an NVIDIA network pickle (.pkl)"
            )
        if not head or head[0] != PICKLE_PROTOCOL_BYTE:
            raise LatentmapError(f"{file} is not a Python pickle (expected an NVIDIA network .pkl, protocol 2 or later)")
        try:
            data = SafeUnpickler(handle).load()
        except RefusedPickle as exc:
            raise LatentmapError(f"refusing to load {file}: {exc}; nothing from it was executed") from None
        except (EOFError, pickle.UnpicklingError, struct.error, zipfile.BadZipFile) as exc:
            raise LatentmapError(f"{file} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
            raise LatentmapError(f"{file} is not a readable network pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(data, NumpyArrayRecord):
        data = data.value
    if not isinstance(data, dict):
        raise LatentmapError(f"{file} holds a {type(data).__name__}, expected NVIDIA's dict of networks (G, D, G_ema)")
    return data


# ----------------------------------------------------------------------------------------------
# From a record to our network.


def network_kind(record: PersistentRecord) -> str:
    """'stylegan2' or 'stylegan3' from the record's class name and (never executed) module source."""
    src = record.module_src
    if record.class_name != "Generator":
        raise LatentmapError(
            f"the network is a {record.class_name or 'nameless record'!r}, not a StyleGAN generator"
        )
    if "class SynthesisInput" in src or "filtered_lrelu" in src:
        return "stylegan3"
    if "class SynthesisBlock" in src or "class ToRGBLayer" in src:
        return "stylegan2"
    raise LatentmapError("the Generator record's source matches neither StyleGAN2 nor StyleGAN3")


def pick_network(contents: dict[str, Any], key: str, source: str) -> PersistentRecord:
    """The record under ``key`` (``G_ema`` by default) with a clear error when it is absent."""
    record = contents.get(key)
    if record is None:
        networks = [k for k, v in contents.items() if isinstance(v, PersistentRecord)]
        raise LatentmapError(
            f"{source} has no {key!r} network (it holds: {', '.join(map(str, networks)) or 'no networks'})"
        )
    if not isinstance(record, PersistentRecord):
        raise LatentmapError(f"{source}: {key!r} is a {type(record).__name__}, not a network record")
    return record


def build_network(kind: str, init_kwargs: dict[str, Any], source: str) -> torch.nn.Module:
    """Our StyleGAN2/StyleGAN3 generator from NVIDIA's constructor kwargs; bad kwargs -> one line."""
    if kind == "stylegan2":
        from latentmap_stylegan.stylegan2 import StyleGAN2Generator as network_class
    elif kind == "stylegan3":
        from latentmap_stylegan.stylegan3 import StyleGAN3Generator as network_class
    else:
        raise LatentmapError(f"{source}: unknown network class {kind!r} (expected stylegan2 or stylegan3)")
    try:
        return network_class(**init_kwargs)
    except LatentmapError:
        raise
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise LatentmapError(f"{source}: cannot build {kind} from its constructor kwargs ({exc})") from None


def load_tensors_strictly(network: torch.nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Copy ``tensors`` into ``network``: every key present, none extra, every shape equal."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing:
        raise LatentmapError(f"{source}: missing {len(missing)} weight(s), first {missing[0]!r} (kwargs and weights disagree?)")
    if extra:
        raise LatentmapError(f"{source}: {len(extra)} unexpected weight(s), first {extra[0]!r} (kwargs and weights disagree?)")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise LatentmapError(
                f"{source}: weight {name!r} has shape {tuple(value.shape)} but the constructor kwargs give "
                f"{tuple(expected[name].shape)}"
            )
    network.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)


@dataclass
class LoadedNetwork:
    """A network built from a pickle plus what identifies it."""

    network: torch.nn.Module
    kind: str
    init_kwargs: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


def load_network_pickle(path: str | Path, key: str = "G_ema") -> LoadedNetwork:
    """Build our generator from an NVIDIA network pickle (``G_ema`` by default, or ``G``), safely."""
    source = str(path)
    contents = read_network_pickle(path)
    record = pick_network(contents, key, source)
    kind = network_kind(record)
    if record.init_args:
        raise LatentmapError(f"{source}: {key!r} was built with positional arguments, expected keyword arguments only")
    init_kwargs = record.init_kwargs
    network = build_network(kind, init_kwargs, source)
    load_tensors_strictly(network, record.tensors(), source)
    return LoadedNetwork(network=network.eval().requires_grad_(False), kind=kind, init_kwargs=init_kwargs)
