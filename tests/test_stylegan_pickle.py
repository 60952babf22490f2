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
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentmap.errors import LatentmapError
from latentmap_stylegan.pickle_loader import load_network_pickle, read_network_pickle
from stylegan_pickles import (
    FIXTURES, FakeEasyDict, discriminator_record, dump_nvidia_pickle, record_tree, sg2_fixture, sg2_record,
    sg3_source,
)


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


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_loads_the_same_weights(tmp_path, marker, protocol):
    from stylegan_pickles import MINI_SG2_KWARGS, mini_sg2_record
    from latentmap_stylegan.stylegan2 import StyleGAN2Generator

    torch.manual_seed(2)
    expected = StyleGAN2Generator(**MINI_SG2_KWARGS).state_dict()
    path = dump_nvidia_pickle(tmp_path / "mini.pkl", {"G_ema": mini_sg2_record(marker, seed=2)}, protocol=protocol)
    loaded = load_network_pickle(path).network.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_tensor_records_read_after_the_file_is_closed(tmp_path):
    """read_network_pickle returns records; large storages stay in the file and are read on use."""
    from collections import OrderedDict

    big = torch.randn(256, 256)  # 256 KiB: kept in the file, not in memory
    path = tmp_path / "records.pkl"
    path.write_bytes(pickle.dumps({"big": big, "small": torch.arange(6.0).reshape(2, 3).t(), "d": OrderedDict(a=1)}))
    contents = read_network_pickle(path)
    assert torch.equal(contents["big"].to_tensor(), big)
    assert torch.equal(contents["small"].to_tensor(), torch.arange(6.0).reshape(2, 3).t())
    assert contents["d"] == {"a": 1}


def test_zip_serialised_storage_is_read(tmp_path):
    """A storage saved in torch's zip format inside the pickle (``_load_from_bytes`` of zip bytes)."""
    import io
    from collections import OrderedDict

    from stylegan_pickles import Call, nvidia_dumps

    buffer = io.BytesIO()
    torch.save(torch.arange(6, dtype=torch.float32)._typed_storage(), buffer)
    assert buffer.getvalue()[:2] == b"PK"
    storage = Call(torch.storage._load_from_bytes, buffer.getvalue())
    tensor = Call(torch._utils._rebuild_tensor_v2, storage, 1, (2, 2), (2, 1), False, OrderedDict())
    path = tmp_path / "zip.pkl"
    path.write_bytes(nvidia_dumps({"x": tensor}))
    assert read_network_pickle(path)["x"].to_tensor().tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_converted_file_with_kwargs_describing_a_huge_network_is_refused(tmp_path, sg2_pickle):
    """The converted (safetensors) loader bounds the network by the stored tensors before allocating, too."""
    import json as json_module

    from safetensors.torch import load_file as load_safetensors, save_file
    from latentmap_stylegan.converted import load_converted, save_converted

    out = save_converted(load_network_pickle(sg2_pickle), tmp_path / "net.safetensors")
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as handle:
        metadata = dict(handle.metadata())
    kwargs = json_module.loads(metadata["init_kwargs"])
    kwargs.update(channel_base=1 << 22, channel_max=1 << 16, img_resolution=2048)
    metadata["init_kwargs"] = json_module.dumps(kwargs)
    save_file(load_safetensors(out), str(out), metadata=metadata)
    with pytest.raises(LatentmapError, match=r"net\.safetensors: the constructor kwargs describe a network larger"):
        load_converted(out)
