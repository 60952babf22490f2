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
