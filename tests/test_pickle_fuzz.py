"""Hostile and fuzzed StyleGAN network pickles (issue 15): each one loads or is refused in one line.

Hand-crafted files cover each way a crafted pickle attacked the loader: a structured numpy dtype
that read outside its data (a segfault), memory bombs (stride-0 tensors, kwargs describing a
huge network, huge memo indices and byte lengths), exponential walks over shared references,
cycles and deep nesting, colliding dict keys, BUILD on the loader's own functions and classes.
The fuzz test mutates tiny network pickles made by ``stylegan_pickles`` (NVIDIA's layout, from
the fixtures' networks) byte-wise and structurally, plus randomised hand-crafted records. Every
case must end in success or a one-line ``LatentmapError`` within ``CASE_SECONDS``. The few files
that crashed or exhausted the old loader are loaded in a subprocess, so a regression fails the
test instead of killing pytest, and that subprocess reports its peak memory.
"""

from __future__ import annotations

import json
import pickletools
import random
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from latentmap_stylegan import pickle_loader
from latentmap_stylegan.pickle_loader import load_network_pickle
from stylegan_pickles import (
    MINI_SG2_KWARGS,
    Call,
    dump_nvidia_pickle,
    hostile_pickles,
    mini_network_contents,
    mini_sg2_record,
    nvidia_dumps,
    record_tree,
    sg2_fixture,
    sg2_record,
    sg3_source,
)

from latentmap.errors import LatentmapError

CASE_SECONDS = 2.0
# Files that crashed the old loader, exhausted its memory or stalled it: loaded in a subprocess.
IN_SUBPROCESS = ("structured_dtype", "stride0_tensor", "kwargs_bomb", "memo_index", "bytearray8_length",
                 "binbytes8_length", "colliding_keys", "dag_kwargs", "dag_modules", "many_mapping_layers")
EXPECTED = {
    "structured_dtype": r"numpy dtype 'V8' \(only plain numeric dtypes are read\)",
    "dtype_fields_in_state": r"structured or sized numpy dtype \(f8",
    "stride0_tensor": r"tensor record of 268435456 elements over 1 stored ones .*repeated elements",
    "stride0_weight": r"tensor record of 128 elements over 1 stored ones",
    "kwargs_bomb": r"kwargs describe a network larger than the tensors stored",
    "negative_size": r"cannot build stylegan2 from its constructor kwargs \(.*negative dimension",
    "huge_int": r"constructor kwargs hold a 4001-bit integer",
    "many_mapping_layers": r"num_layers = 1000000000 describes more layers than the \d+ tensors stored",
    "dag_kwargs": r"constructor kwargs hold more than 100000 values",
    "cyclic_kwargs": r"constructor kwargs refer to themselves",
    "deep_kwargs": r"constructor kwargs are nested more than 64 levels deep",
    "dag_modules": r"is reached twice \(shared or cyclic modules are not read\)",
    "cyclic_modules": r"network record me\. is reached twice",
    "deep_modules": r"nested more than 64 modules deep",
    "memo_index": r"holds None, expected NVIDIA's dict of networks",
    "bytearray8_length": r"truncated or corrupt .*runs past the end of the file",
    "binbytes8_length": r"truncated or corrupt .*runs past the end of the file",
    "colliding_keys": r"a dict key or set item that is 2305843009213693951 \(only text keys are read\)",
    "build_on_a_function": r"sets the state of a function",
    "build_on_a_class": r"sets the state of a type",
    "storage_declares_more": r"storage record declaring 1000000000 elements, more than its data holds",
    "storage_not_a_pickle": r"truncated or corrupt",
}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "MARKER_code_was_executed"
    for name, data in hostile_pickles(marker).items():
        (folder / f"{name}.pkl").write_bytes(data)
    return folder


def test_every_hostile_case_has_an_expected_message(hostile_dir):
    assert sorted(p.stem for p in hostile_dir.glob("*.pkl")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - set(IN_SUBPROCESS)))
def test_hostile_pickle_is_refused_in_one_line(hostile_dir, name):
    start = time.perf_counter()
    with pytest.raises(LatentmapError, match=EXPECTED[name]) as info:
        load_network_pickle(hostile_dir / f"{name}.pkl")
    assert time.perf_counter() - start < CASE_SECONDS
    assert "\n" not in str(info.value) and str(hostile_dir / name) in str(info.value)


CHILD = r"""
import json, resource, sys, time
from latentmap import LatentmapError
from latentmap_stylegan.pickle_loader import load_network_pickle
load_network_pickle(sys.argv[1])  # warm up: imports, one network built
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[2:]:
    start = time.perf_counter()
    try:
        load_network_pickle(path)
        outcome = "loaded"
    except LatentmapError as exc:
        outcome = str(exc)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"path": path, "outcome": outcome, "seconds": time.perf_counter() - start, "grown_mb": grown}),
          flush=True)
"""


def test_hostile_pickles_neither_crash_nor_exhaust_the_process(hostile_dir, tmp_path, marker):
    """Segfault, memory bombs and stalls of the old loader, in a subprocess that reports its peak memory."""
    good = dump_nvidia_pickle(tmp_path / "good.pkl", {"G_ema": mini_sg2_record(marker)})
    paths = [str(hostile_dir / f"{name}.pkl") for name in IN_SUBPROCESS]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(good), *paths], capture_output=True, text=True,
                          check=False, timeout=120, cwd=Path(__file__).parent)
    assert proc.returncode == 0, f"the loader crashed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in results] == paths
    for name, result in zip(IN_SUBPROCESS, results):
        assert result["outcome"] != "loaded" and "\n" not in result["outcome"], name
        assert __import__("re").search(EXPECTED[name], result["outcome"]), (name, result["outcome"])
        assert result["seconds"] < CASE_SECONDS, (name, result["seconds"])
        assert result["grown_mb"] < 64, (name, result["grown_mb"])  # the old loader took 1-16 GB


def test_only_the_network_used_is_read(tmp_path, marker, monkeypatch):
    """G and D hold large storages; loading G_ema reads none of their bytes (nor holds them in memory)."""
    big = torch.nn.Module()
    big.weight = torch.nn.Parameter(torch.randn(1024, 1024))  # 4 MiB: stays in the file until used
    contents = {
        "G": record_tree(big, sg3_source(marker), {}, class_name="Generator"),
        "D": record_tree(big, "class DiscriminatorBlock: pass\n", {}, class_name="Discriminator"),
        "G_ema": mini_sg2_record(marker),
    }
    path = dump_nvidia_pickle(tmp_path / "snapshot.pkl", contents)
    assert path.stat().st_size > 8 << 20
    read = []
    original = pickle_loader._Source.readinto
    monkeypatch.setattr(pickle_loader._Source, "readinto",
                        lambda self, offset, buffer: (read.append(memoryview(buffer).nbytes), original(self, offset, buffer))[1])
    loaded = load_network_pickle(path)
    assert loaded.kind == "stylegan2"
    assert sum(read) < 64 << 10, f"read {sum(read)} bytes of lazily kept storages"


def test_failed_allocation_is_one_line(tmp_path, marker, monkeypatch):
    """A network that fits the file but not the machine: one line, not torch's RuntimeError."""
    path = dump_nvidia_pickle(tmp_path / "net.pkl", {"G_ema": mini_sg2_record(marker)})

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 256 bytes")

    monkeypatch.setattr(torch, "randn", no_memory)
    with pytest.raises(LatentmapError, match=r"net\.pkl: not enough memory to build the network its kwargs describe"):
        load_network_pickle(path)


def test_stored_bytes_bound_repeated_views(tmp_path, marker):
    """Tensors that each view the same storage declare more than the file holds."""
    record = mini_sg2_record(marker, kwargs=dict(MINI_SG2_KWARGS, z_dim=64, w_dim=64, mapping_kwargs={"num_layers": 2}))
    layers = record.meta["state"]["_modules"]["mapping"].meta["state"]["_modules"]
    shared = torch.zeros(64, 64)
    for layer in ("fc0", "fc1"):
        layers[layer].meta["state"]["_parameters"]["weight"] = shared
    path = dump_nvidia_pickle(tmp_path / "shared.pkl", {"G_ema": record}, protocol=2)
    with pytest.raises(LatentmapError, match=r"declare \d+ bytes over \d+ bytes of stored data"):
        load_network_pickle(path)


# ----------------------------------------------------------------------------------------------
# The fuzz test.

OPCODES = [op.code.encode("latin1") for op in pickletools.opcodes]
NAMES = [("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"), ("numpy", "dtype"),
         ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"), ("numpy", "ndarray"),
         ("collections", "OrderedDict"), ("builtins", "set"), ("_codecs", "encode"), ("dnnlib.util", "EasyDict"),
         ("torch_utils.persistence", "_reconstruct_persistent_obj"), ("torch.storage", "_load_from_bytes"),
         ("torch", "Size"), ("torch", "float32"), ("os", "system"), ("builtins", "getattr"), ("torch", "FloatStorage")]
SNIPPETS = [b"b", b"R", b"\x81", b"s", b"u", b"a", b"e", b"(", b"t", b"0", b"1", b"2", b"N", b"}", b"]", b")",
            b"\x85", b"\x86", b"\x87", b"\x8f", b"\x90", b"\x91", b"\x94", b"h\x00", b"h\x07", b"q\x01",
            b"r\xff\xff\xff\x7f", b"J\xff\xff\xff\xff", b"\x8a\x08" + b"\xff" * 8, b"\x95" + b"\xff" * 8,
            b"\x8e" + b"\xff" * 8, b"X\xff\xff\xff\x7f", b"\x8c\x05numpy\x8c\x05dtype\x93", b"\x88", b"."]
INT_ARGS = {"K": 1, "M": 2, "J": 4, "\x8a": 1, "q": 1, "h": 1, "r": 4, "j": 4, "C": 1, "B": 4, "\x8e": 8,
            "\x95": 8, "X": 4, "\x8c": 1, "T": 4, "U": 1, "\x96": 8, "\x8d": 8}
NUMPY_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # the function numpy pickles arrays with (numpy.core or _core)
KWARG_VALUES = [0, -1, 1, 3, 7, 2**31, 2**62, 2**64, -2**63, 1e300, float("nan"), float("inf"), -0.5, True, None,
                "x", "", [], [1, 2], {}, {"num_layers": -3}, {"num_layers": 10**6}, [[[]]], 10**7]


def _boundaries(data: bytes) -> list[int]:
    return [pos for _op, _arg, pos in pickletools.genops(data)] + [len(data)]


def _int_arg_positions(data: bytes) -> list[tuple[int, int]]:
    found = []
    for op, _arg, pos in pickletools.genops(data):
        width = INT_ARGS.get(op.code)
        if width:
            found.append((pos + 1, width))
    return found


def _mutate(rng: random.Random, data: bytes, info: dict, other: bytes, other_bounds: list[int]) -> tuple[str, bytes]:
    bounds, ints = info["bounds"], info["ints"]
    kind = rng.choice(["flip", "flip", "opcode", "opcode", "int", "int", "int", "truncate", "delete", "duplicate",
                       "snippet", "snippet", "global", "crossover"])
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == "opcode":
        buf[rng.choice(bounds[:-1])] = rng.choice(OPCODES)[0]
    elif kind == "int":
        pos, width = rng.choice(ints)
        value = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 2**(8 * width) - 1, 2**(8 * width - 1), rng.getrandbits(8 * width)])
        buf[pos:pos + width] = value.to_bytes(width, "little")
    elif kind == "truncate":
        del buf[rng.choice(bounds[1:-1] + [rng.randrange(len(buf))]):]
    elif kind == "delete":
        i = rng.randrange(len(bounds) - 2)
        del buf[bounds[i]:bounds[min(i + rng.randint(1, 6), len(bounds) - 1)]]
    elif kind == "duplicate":
        i = rng.randrange(len(bounds) - 2)
        chunk = data[bounds[i]:bounds[min(i + rng.randint(1, 12), len(bounds) - 1)]]
        at = rng.choice(bounds[:-1])
        buf[at:at] = chunk
    elif kind == "snippet":
        at = rng.choice(bounds[:-1])
        buf[at:at] = b"".join(rng.choice(SNIPPETS) for _ in range(rng.randint(1, 4)))
    elif kind == "global":
        module, name = rng.choice(NAMES)
        at = rng.choice(bounds[:-1])
        buf[at:at] = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + rng.choice([b"", b")R", b"N\x85R", b"}b", b"0"])
    else:  # crossover: a run of another base's opcodes spliced in
        i = rng.randrange(len(other_bounds) - 2)
        chunk = other[other_bounds[i]:other_bounds[min(i + rng.randint(1, 30), len(other_bounds) - 1)]]
        at = rng.choice(bounds[:-1])
        buf[at:at] = chunk
    return kind, bytes(buf)


def _random_tensor(rng: random.Random):
    numel = rng.choice([0, 1, 7, 64])
    storage = torch.arange(numel, dtype=torch.float32)._typed_storage()
    dims = rng.randint(0, 4)
    pick = lambda: rng.choice([0, 1, 2, 3, 8, 64, 2**31, 2**62, -1, 10**30, 1.5, None])
    return Call(torch._utils._rebuild_tensor_v2, storage, pick(), tuple(pick() for _ in range(dims)),
                tuple(pick() for _ in range(rng.choice([dims, dims, dims + 1]))), False, OrderedDict())


def _random_dtype(rng: random.Random):
    spec = rng.choice(["f4", "f8", "i8", "b1", "V8", "O", "U4", "S3", "M8", "f4,f4", 7, None])
    state = rng.choice([(3, "<", None, None, None, -1, -1, 0), (3, "|", None, ("a",), {"a": (np.dtype("f8"), 8)}, 8, 1, 16),
                        (4, "<", None, None, None, -1, -1, 0, {"x": 1}), (3, ">", None, None, None, -1, -1, 0),
                        (3, "<", (np.dtype("f4"), (1000,)), None, None, 4000, 4, 0), (9,), "state", None])
    dtype = Call(np.dtype, spec, False, True, state=state)
    shape = rng.choice([(2,), (0,), (3, 2), (2**40,), (-1,), ()])
    return Call(NUMPY_RECONSTRUCT, np.ndarray, (0,), b"b",
                state=(1, shape, dtype, rng.random() < 0.5, bytes(rng.choice([0, 8, 16, 24]))))


def _crafted(rng: random.Random, marker: Path) -> tuple[str, bytes]:
    """A randomised hand-crafted hostile file: odd tensor records, dtypes, kwargs, module graphs."""
    record = mini_sg2_record(marker)
    state = record.meta["state"]
    kind = rng.choice(["tensor", "tensor", "dtype", "kwarg", "kwarg", "graph"])
    if kind == "tensor":
        module = rng.choice(["mapping", "synthesis"])
        params = state["_modules"][module].meta["state"]["_modules"]
        child = params[rng.choice(list(params))]
        target = child.meta["state"]["_parameters"] or child.meta["state"]["_buffers"]
        if target:
            target[rng.choice(list(target))] = _random_tensor(rng)
        else:
            state["_buffers"]["extra"] = _random_tensor(rng)
        contents = {"G_ema": record}
    elif kind == "dtype":
        contents = {"G_ema": record, "progress": {"array": _random_dtype(rng)}}
        if rng.random() < 0.5:
            state["_init_kwargs"]["img_channels"] = _random_dtype(rng)
    elif kind == "kwarg":
        kwargs = state["_init_kwargs"]
        key = rng.choice(list(kwargs) + ["architecture", "resample_filter", "synthesis_kwargs", "channels_last"])
        kwargs[key] = rng.choice(KWARG_VALUES + [list(range(rng.choice([3, 300, 3000])))])
        contents = {"G_ema": record}
    else:
        modules = state["_modules"]
        names = list(modules)
        a, b = rng.choice(names), rng.choice(names)
        modules[a] = rng.choice([modules[b], None, 3, record]) if a != b or rng.random() < 0.5 else modules[a]
        contents = {"modules": modules, "G_ema": record}
    return f"crafted-{kind}", nvidia_dumps(contents, protocol=rng.choice([2, 4]))


def test_fuzzed_pickles_load_or_fail_in_one_line(tmp_path, marker):
    rng = random.Random(15)
    kwargs, weights, _ = sg2_fixture()
    bases = {
        "mini-p4": dump_nvidia_pickle(tmp_path / "b1.pkl", mini_network_contents(marker), protocol=4).read_bytes(),
        "mini-p2": dump_nvidia_pickle(tmp_path / "b2.pkl", mini_network_contents(marker), protocol=2).read_bytes(),
        "mini-p3": dump_nvidia_pickle(tmp_path / "b3.pkl", {"G_ema": mini_sg2_record(marker)}, protocol=3).read_bytes(),
        "sg2_tiny": dump_nvidia_pickle(tmp_path / "b4.pkl", {"G_ema": sg2_record(kwargs, weights, marker)}).read_bytes(),
    }
    info = {name: {"bounds": _boundaries(data), "ints": _int_arg_positions(data)} for name, data in bases.items()}
    plan = [("mini-p4", 1100), ("mini-p2", 700), ("mini-p3", 500), ("sg2_tiny", 150), ("crafted", 600)]
    path = tmp_path / "case.pkl"
    failures, outcomes, slowest = [], {"loaded": 0, "refused": 0}, (0.0, "")
    start = time.perf_counter()
    for base, count in plan:
        for index in range(count):
            if base == "crafted":
                kind, data = _crafted(rng, marker)
            else:
                other = rng.choice(list(bases))
                kind, data = _mutate(rng, bases[base], info[base], bases[other], info[other]["bounds"])
            path.write_bytes(data)
            case = f"{base}#{index} ({kind}, {len(data)} bytes)"
            began = time.perf_counter()
            try:
                load_network_pickle(path)
                outcomes["loaded"] += 1
            except LatentmapError as exc:
                outcomes["refused"] += 1
                if "\n" in str(exc) or not str(exc):
                    failures.append(f"{case}: multi-line or empty message {str(exc)[:300]!r}")
            except BaseException as exc:  # noqa: BLE001 - any other outcome is the bug this test looks for
                failures.append(f"{case}: {type(exc).__name__}: {str(exc)[:300]}")
            elapsed = time.perf_counter() - began
            slowest = max(slowest, (elapsed, case))
    total = time.perf_counter() - start
    cases = sum(count for _, count in plan)
    print(f"fuzz: {cases} cases in {total:.1f} s, {outcomes}, slowest {slowest[0]:.3f} s ({slowest[1]})")
    assert not failures, f"{len(failures)} of {cases} cases failed; first ones:\n" + "\n".join(failures[:15])
    assert slowest[0] < CASE_SECONDS, slowest
    assert outcomes["loaded"] > 0 and outcomes["refused"] > cases // 2
