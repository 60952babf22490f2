"""The safe loader for NVIDIA network pickles.

The pickles here are written by the tests themselves to NVIDIA's documented layout: a dict of
``torch_utils.persistence`` records (``_reconstruct_persistent_obj(meta)`` with module source text,
class name and a state holding ``_init_kwargs``, ``_parameters``, ``_buffers``, ``_modules``), with
real torch tensors/parameters pickled by torch itself. No NVIDIA code is involved. The module
source text carries a payload that would create a marker file if anyone executed it.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentmap.errors import LatentmapError
from latentmap_stylegan.pickle_loader import load_network_pickle, read_network_pickle
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


def dump_nvidia_pickle(path: Path, contents: dict, protocol: int = 4) -> Path:
    """Pickle ``contents`` with fake ``torch_utils.persistence`` / ``dnnlib`` modules present only while dumping."""
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
        path.write_bytes(pickle.dumps(contents, protocol=protocol))
    finally:
        for name in fakes:
            sys.modules.pop(name, None)
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


@pytest.fixture(autouse=True)
def one_thread():
    """The CI box is shared: one thread is faster than oversubscribed ones, and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER_code_was_executed"
    yield path
    assert not path.exists(), "code from the pickle was executed"


@pytest.fixture
def sg2_pickle(tmp_path, marker) -> Path:
    kwargs, weights, _ = sg2_fixture()
    contents = {
        "G": sg2_record(kwargs, weights, marker, scale=1.1),
        "D": discriminator_record(marker),
        "G_ema": sg2_record(kwargs, weights, marker),
        "training_set_kwargs": FakeEasyDict(resolution=32, max_size=np.int64(70000), mirror=True),
        "augment_pipe": None,
        "progress": {"cur_nimg": np.array([1234], dtype=np.int64)},
    }
    return dump_nvidia_pickle(tmp_path / "network-snapshot.pkl", contents)


def test_loads_g_ema_and_matches_nvidia_outputs(sg2_pickle, marker):
    _, _, cases = sg2_fixture()
    loaded = load_network_pickle(sg2_pickle)
    assert loaded.kind == "stylegan2"
    assert loaded.init_kwargs["mapping_kwargs"] == {"num_layers": 2}
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    with torch.no_grad():
        img = loaded.network.synthesis(cases["ws_psi1"])
        end_to_end = loaded.network(cases["z"], truncation_psi=0.7)
    scale = cases["img_ws_psi1"].abs().max()
    assert (img - cases["img_ws_psi1"]).abs().max() <= 2e-5 * scale
    assert (end_to_end - cases["img_G_psi07"]).abs().max() <= 2e-5 * scale


def test_key_option_reads_g_instead_of_g_ema(sg2_pickle):
    g = load_network_pickle(sg2_pickle, key="G").network
    g_ema = load_network_pickle(sg2_pickle).network
    weight = "synthesis.b8.conv0.weight"
    assert torch.allclose(g.state_dict()[weight], g_ema.state_dict()[weight] * 1.1)


def test_numpy_arrays_scalars_and_easydicts_are_read_as_plain_data(sg2_pickle):
    contents = read_network_pickle(sg2_pickle)
    assert contents["training_set_kwargs"]["max_size"] == 70000
    array = contents["progress"]["cur_nimg"]
    assert getattr(array, "value", array).tolist() == [1234]


@pytest.mark.parametrize("spelling", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_both_numpy_module_spellings_are_accepted(tmp_path, spelling):
    raw = pickle.dumps({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5)}, protocol=2)
    for name in (b"numpy._core.multiarray", b"numpy.core.multiarray"):  # protocol 2 names globals as text
        raw = raw.replace(name + b"\n", spelling.encode() + b"\n")
    assert spelling.encode() in raw
    path = tmp_path / "np.pkl"
    path.write_bytes(raw)
    contents = read_network_pickle(path)
    assert contents["a"].value.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert contents["s"] == 2.5


def test_stylegan3_record_is_recognised_and_loaded(tmp_path, marker):
    from latentmap_stylegan.stylegan3 import StyleGAN3Generator

    folder = FIXTURES / "sg3_t"
    config = json.loads((folder / "config.json").read_text())
    G = StyleGAN3Generator(**config["init_kwargs"])
    G.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    cases = {k: v.clone() for k, v in load_file(folder / "cases.safetensors").items()}
    path = dump_nvidia_pickle(tmp_path / "sg3.pkl", {"G_ema": record_tree(G, sg3_source(marker), config["init_kwargs"])})
    loaded = load_network_pickle(path)
    assert loaded.kind == "stylegan3"
    with torch.no_grad():
        img = loaded.network.synthesis(cases["ws_psi1"])
    assert (img - cases["img_ws_psi1"]).abs().max() <= 2e-5 * cases["img_ws_psi1"].abs().max()


class Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_reduce_is_refused_and_never_runs(tmp_path, marker):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil(f"touch {marker}")}))
    with pytest.raises(LatentmapError, match=r"refusing to load .*evil\.pkl.*'(posix|os|nt)\.system'.*nothing from it was executed"):
        load_network_pickle(path)
    assert not marker.exists()


def test_malicious_pickle_inside_a_tensor_storage_is_refused(tmp_path, marker):
    inner = pickle.dumps(Evil(f"touch {marker}"), protocol=2)

    class EvilStorage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (inner,))

    path = tmp_path / "evil_storage.pkl"
    path.write_bytes(pickle.dumps({"G_ema": EvilStorage()}))
    with pytest.raises(LatentmapError, match=r"system"):
        read_network_pickle(path)
    assert not marker.exists()


def test_builtins_eval_is_refused(tmp_path):
    class EvalCall:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    path = tmp_path / "eval.pkl"
    path.write_bytes(pickle.dumps({"x": EvalCall()}))
    with pytest.raises(LatentmapError, match=r"'builtins\.eval', which is not a tensor or plain container"):
        read_network_pickle(path)


def test_not_a_pickle_is_one_clear_line(tmp_path):
    path = tmp_path / "network.pkl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not a pickle")
    with pytest.raises(LatentmapError, match=r"network\.pkl is not a Python pickle"):
        load_network_pickle(path)


def test_zip_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"x")
    with pytest.raises(LatentmapError, match=r"zip archive .*not an NVIDIA network pickle"):
        load_network_pickle(path)


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(LatentmapError, match=r"nope\.pkl does not exist"):
        load_network_pickle(tmp_path / "nope.pkl")


def test_truncated_pickle_is_one_clear_line(sg2_pickle, tmp_path):
    data = sg2_pickle.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LatentmapError, match=r"cut\.pkl is truncated or corrupt"):
        load_network_pickle(cut)


def test_discriminator_only_pickle_is_one_clear_line(tmp_path, marker):
    path = dump_nvidia_pickle(tmp_path / "d_only.pkl", {"D": discriminator_record(marker)})
    with pytest.raises(LatentmapError, match=r"has no 'G_ema' network \(it holds: D\)"):
        load_network_pickle(path)
    with pytest.raises(LatentmapError, match=r"'Discriminator', not a StyleGAN generator"):
        load_network_pickle(path, key="D")


def test_weights_that_do_not_match_kwargs_are_one_clear_line(tmp_path, marker):
    kwargs, weights, _ = sg2_fixture()
    record = sg2_record(kwargs, weights, marker)
    record.meta["state"]["_init_kwargs"]["channel_max"] = 48  # the weights were made with 64
    path = dump_nvidia_pickle(tmp_path / "mismatch.pkl", {"G_ema": record})
    with pytest.raises(LatentmapError, match=r"weight 'synthesis\.b4\.const' has shape \(64, 4, 4\) but the constructor kwargs give \(48, 4, 4\)"):
        load_network_pickle(path)


def test_missing_weight_is_one_clear_line(tmp_path, marker):
    kwargs, weights, _ = sg2_fixture()
    record = sg2_record(kwargs, weights, marker)
    del record.meta["state"]["_modules"]["mapping"].meta["state"]["_buffers"]["w_avg"]
    path = dump_nvidia_pickle(tmp_path / "missing.pkl", {"G_ema": record})
    with pytest.raises(LatentmapError, match=r"missing 1 weight\(s\), first 'mapping\.w_avg'"):
        load_network_pickle(path)


def test_unknown_constructor_kwarg_is_one_clear_line(tmp_path, marker):
    kwargs, weights, _ = sg2_fixture()
    record = sg2_record(kwargs, weights, marker)
    record.meta["state"]["_init_kwargs"]["architecture"] = "pyramid"
    path = dump_nvidia_pickle(tmp_path / "arch.pkl", {"G_ema": record})
    with pytest.raises(LatentmapError, match=r"cannot build stylegan2 from its constructor kwargs .*pyramid"):
        load_network_pickle(path)
