"""Writes pickles to NVIDIA's documented network-pickle layout, for the loader tests.

A ``torch_utils.persistence`` record pickles as ``_reconstruct_persistent_obj(meta)`` with ``meta =
{type, version, module_src, class_name, state}`` and the state holding ``_init_kwargs``,
``_parameters``, ``_buffers`` and ``_modules``. Fake ``torch_utils`` / ``dnnlib`` modules exist only
while dumping (so pickle can name them); the loader under test never imports them. Tensors and
parameters are pickled by torch itself. No NVIDIA code is involved. ``module_src`` carries a payload
that creates a marker file if anyone executes it.
"""

from __future__ import annotations

import json
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file

from latentmap_stylegan.stylegan2 import StyleGAN2Generator

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
NVIDIA_NAMES = {
    "StyleGAN2Generator": "Generator", "StyleGAN3Generator": "Generator", "SkipLayer": "Conv2dLayer",
}


def payload(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\n"


def sg2_source(marker: Path) -> str:
    return payload(marker) + "class SynthesisBlock(torch.nn.Module):\n    pass\nclass ToRGBLayer: pass\n"


def sg3_source(marker: Path) -> str:
    return payload(marker) + "class SynthesisInput(torch.nn.Module):\n    pass\n# filtered_lrelu\n"


class FakeRecord:
    """Pickles exactly as a torch_utils.persistence object does: a reduce to the reconstruct function."""

    def __init__(self, meta: dict) -> None:
        self.meta = meta

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


class FakeEasyDict(dict):
    pass


def record_tree(module: torch.nn.Module, source: str, init_kwargs: dict | None = None, class_name: str | None = None):
    """A persistence record for ``module`` and (recursively) its children, NVIDIA's state layout."""
    name = class_name or NVIDIA_NAMES.get(type(module).__name__, type(module).__name__)
    state = {
        "training": False,
        "_parameters": OrderedDict((k, torch.nn.Parameter(v.detach().clone())) for k, v in module._parameters.items()),
        "_buffers": OrderedDict((k, None if v is None else v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_modules": OrderedDict((k, record_tree(v, source)) for k, v in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": init_kwargs if init_kwargs is not None else {},
    }
    return FakeRecord({"type": "class", "version": 6, "module_src": source, "class_name": name, "state": state})


@contextmanager
def fake_nvidia_modules():
    """Fake ``torch_utils.persistence`` / ``dnnlib`` modules, present only while pickling."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called: the loader must not resolve it to this
        raise AssertionError("NVIDIA code path executed")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    dnnlib_util = types.ModuleType("dnnlib.util")
    FakeEasyDict.__module__, FakeEasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    dnnlib_util.EasyDict = FakeEasyDict
    fakes = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
             "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": dnnlib_util}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for name in fakes:
            sys.modules.pop(name, None)


def nvidia_dumps(contents, protocol: int = 4) -> bytes:
    """Pickle ``contents`` with fake ``torch_utils.persistence`` / ``dnnlib`` modules present only while dumping."""
    with fake_nvidia_modules():
        return pickle.dumps(contents, protocol=protocol)


def dump_nvidia_pickle(path: Path, contents: dict, protocol: int = 4) -> Path:
    path.write_bytes(nvidia_dumps(contents, protocol))
    return path


def sg2_fixture(name: str = "sg2_tiny"):
    folder = FIXTURES / name
    config = json.loads((folder / "config.json").read_text())
    kwargs = dict(config["init_kwargs"])
    weights = load_file(folder / "weights.safetensors")
    cases = {k: v.clone() for k, v in load_file(folder / "cases.safetensors").items()}
    return kwargs, weights, cases


def sg2_record(kwargs: dict, weights: dict, marker: Path, *, scale: float = 1.0):
    G = StyleGAN2Generator(**kwargs)
    G.load_state_dict({k: v * scale if k.endswith("weight") else v for k, v in weights.items()})
    nvidia_kwargs = dict(kwargs)
    nvidia_kwargs["mapping_kwargs"] = FakeEasyDict(kwargs["mapping_kwargs"])  # train.py passes EasyDicts
    return record_tree(G, sg2_source(marker), nvidia_kwargs)


def discriminator_record(marker: Path):
    D = torch.nn.Sequential(torch.nn.Linear(4, 4))
    return record_tree(D, payload(marker) + "class DiscriminatorBlock: pass\n", {"c_dim": 0}, class_name="Discriminator")


# ----------------------------------------------------------------------------------------------
# Small networks and hostile files for the hardening and fuzz tests (tests/test_pickle_fuzz.py).

MINI_SG2_KWARGS = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=4, img_channels=3,
                       mapping_kwargs={"num_layers": 1}, channel_base=64, channel_max=8)


def mini_sg2_record(marker: Path, *, seed: int = 0, kwargs: dict | None = None):
    """A persistence record of a tiny random StyleGAN2 (4 px, 8 channels: 16 tensors, 1012 weights)."""
    kwargs = dict(MINI_SG2_KWARGS if kwargs is None else kwargs)
    torch.manual_seed(seed)
    G = StyleGAN2Generator(**kwargs)
    kwargs["mapping_kwargs"] = FakeEasyDict(kwargs["mapping_kwargs"])
    return record_tree(G, sg2_source(marker), kwargs)


def mini_network_contents(marker: Path) -> dict:
    """NVIDIA's snapshot layout around tiny networks: G, D, G_ema, EasyDict kwargs, numpy values."""
    import numpy as np

    return {
        "G": mini_sg2_record(marker, seed=1),
        "D": discriminator_record(marker),
        "G_ema": mini_sg2_record(marker, seed=2),
        "training_set_kwargs": FakeEasyDict(resolution=8, max_size=np.int64(70000), xflip=False),
        "augment_pipe": None,
        "progress": {"cur_nimg": np.array([1234], dtype=np.int64), "scale": np.float32(0.5)},
    }


class Global:
    """A name pickled as ``GLOBAL module name`` without the object existing (see ``hostile_dumps``)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires reduce functions to be callable
        raise AssertionError("never called")


class Call:
    """Pickles as ``func(*args)`` followed by ``BUILD state`` when a state is given.

    ``func`` is a real function or class (any pickler) or a ``Global`` (``hostile_dumps`` only).
    """

    def __init__(self, func, *args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class Raw:
    """Raw pickle opcodes, written as they are; they must leave exactly one object on the stack."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class _HostilePickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_global_name(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")

    def save_raw(self, obj: Raw) -> None:
        self.write(obj.data)

    dispatch[Global] = save_global_name
    dispatch[Raw] = save_raw


def hostile_dumps(contents, protocol: int = 2) -> bytes:
    """Pickle ``contents`` (which may hold ``Global``/``Call``/``Raw`` and persistence records)."""
    import io

    buffer = io.BytesIO()
    with fake_nvidia_modules():
        _HostilePickler(buffer, protocol=protocol).dump(contents)
    return buffer.getvalue()


def text_op(text: str) -> bytes:
    """BINUNICODE opcode for ``text``."""
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def raw_value(value) -> bytes:
    """Opcodes that push ``value`` (a protocol-2 pickle without its header and STOP; it uses memo slots)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def raw_record(class_name: str, module_src: str, modules: bytes, kwargs: bytes = b"}") -> bytes:
    """Opcodes of one persistence record whose ``_modules`` dict is ``{"m": <modules opcodes>}``."""
    state = (b"}(" + text_op("_parameters") + b"}" + text_op("_buffers") + b"}" + text_op("_modules") + b"}"
             + text_op("m") + modules + b"s" + text_op("_init_kwargs") + kwargs + b"u")
    meta = (b"}(" + text_op("type") + text_op("class") + text_op("class_name") + text_op(class_name)
            + text_op("module_src") + text_op(module_src) + text_op("state") + state + b"u")
    return b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n" + meta + b"\x85R"


def stride0_tensor(size=(16384, 16384)):
    """A tensor record of ``size`` over a one-element storage (stride 0): 1 GiB if cloned."""
    storage = torch.zeros(1)._typed_storage()
    return Call(torch._utils._rebuild_tensor_v2, storage, 0, tuple(size), (0,) * len(size), False, OrderedDict())


def structured_dtype_array(spec: str = "V8", offset: int = 1 << 40):
    """A numpy array whose dtype state declares a field far outside each element's 8 bytes."""
    import numpy as np

    state = (3, "|", None, ("a",), {"a": (np.dtype("f8"), offset)}, 8, 1, 16)
    dtype = Call(np.dtype, spec, False, True, state=state)
    return Call(Global("numpy.core.multiarray", "_reconstruct"), np.ndarray, (0,), b"b",
                state=(1, (1000,), dtype, False, bytes(8000)))


def legacy_storage_blob(declared: int, data: bytes = bytes(4)) -> bytes:
    """torch's legacy ``torch.save`` stream of one float storage that declares ``declared`` elements."""
    import io

    class StoragePickler(_HostilePickler):
        def persistent_id(self, obj):
            return ("storage", Global("torch", "FloatStorage"), "0", "cpu", declared, None) if obj == "STORAGE" else None

    buffer = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(value, buffer, protocol=2)
    StoragePickler(buffer, protocol=2).dump("STORAGE")
    pickle.dump(["0"], buffer, protocol=2)
    return buffer.getvalue() + declared.to_bytes(8, "little") + data


def hostile_pickles(marker: Path) -> dict[str, bytes]:
    """One file per way a crafted pickle attacked the loader (issue 15), as bytes."""
    src = sg2_source(marker)
    kwargs = dict(MINI_SG2_KWARGS, mapping_kwargs=FakeEasyDict(MINI_SG2_KWARGS["mapping_kwargs"]))

    def with_kwargs(**changes):
        record = mini_sg2_record(marker)
        record.meta["state"]["_init_kwargs"] = dict(kwargs, **changes)
        return hostile_dumps({"G_ema": record})

    def generator_with(**state):
        meta_state = {"_parameters": OrderedDict(), "_buffers": OrderedDict(), "_modules": OrderedDict(),
                      "_init_kwargs": dict(kwargs), **state}
        return FakeRecord({"type": "class", "version": 6, "module_src": src, "class_name": "Generator", "state": meta_state})

    shared: list = []
    for _ in range(40):
        shared = [shared, shared]  # 2**40 paths through 41 lists
    dag = FakeRecord({"type": "class", "module_src": "", "class_name": "Leaf", "state": {"_modules": {}}})
    for _ in range(40):
        dag = FakeRecord({"type": "class", "module_src": "", "class_name": "Node",
                          "state": {"_modules": {"a": dag, "b": dag}}})
    cyclic_kwargs: dict = {}
    cyclic_kwargs["again"] = cyclic_kwargs
    cycle_modules: dict = {}
    cycle = generator_with(_modules=cycle_modules)
    cycle_modules["me"] = cycle
    deep_list = Raw(b"]" * 100_000 + b"a" * 99_999)
    deep_records = b"N"
    for _ in range(5000):
        deep_records = raw_record("Module", "", deep_records)
    mini = mini_sg2_record(marker)
    mini.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["b4"].meta["state"]["_parameters"]["const"] = \
        stride0_tensor((8, 4, 4))
    collide = (1 << 61) - 1  # every multiple hashes to 0
    return {
        "structured_dtype": with_kwargs(img_channels=structured_dtype_array()),
        "dtype_fields_in_state": hostile_dumps({"x": structured_dtype_array(spec="f8")}),
        "stride0_tensor": hostile_dumps({"x": stride0_tensor()}),
        "stride0_weight": hostile_dumps({"G_ema": mini}),
        "kwargs_bomb": with_kwargs(channel_base=1 << 20, channel_max=1 << 14, img_resolution=1024),
        "negative_size": with_kwargs(z_dim=-5),
        "huge_int": with_kwargs(w_dim=1 << 4000),
        "many_mapping_layers": with_kwargs(mapping_kwargs={"num_layers": 10**9}),
        "dag_kwargs": with_kwargs(mapping_kwargs=shared),
        "cyclic_kwargs": with_kwargs(mapping_kwargs=cyclic_kwargs),
        "deep_kwargs": with_kwargs(mapping_kwargs=deep_list),
        "dag_modules": hostile_dumps({"G_ema": generator_with(_modules={"dag": dag})}),
        "cyclic_modules": hostile_dumps({"modules": cycle_modules, "G_ema": cycle}),
        "deep_modules": b"\x80\x02}" + text_op("G_ema") + raw_record("Generator", src, deep_records, raw_value(MINI_SG2_KWARGS))
        + b"s.",
        "memo_index": b"\x80\x02Nr\xff\xff\xff\x3f.",
        "bytearray8_length": b"\x80\x05\x96" + (1 << 34).to_bytes(8, "little") + b"xx.",
        "binbytes8_length": b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"xx.",
        "colliding_keys": hostile_dumps({k * collide: 0 for k in range(1, 20_001)}),
        "build_on_a_function": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + text_op("__defaults__") + b"N\x85s\x86b.",
        "build_on_a_class": b"\x80\x02cdnnlib.util\nEasyDict\n(N}X\x0b\x00\x00\x00__getattr__Nstb.",
        "storage_declares_more": hostile_dumps({"x": Call(torch.storage._load_from_bytes, legacy_storage_blob(10**9))}),
        "storage_not_a_pickle": hostile_dumps({"x": Call(torch.storage._load_from_bytes, bytes(64))}),
    }
