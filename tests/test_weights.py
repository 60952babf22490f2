"""Weight resolution: explicit path > env var > cache > download, checksums, offline messages."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from latentmap import weights
from latentmap.errors import LatentmapError
from latentmap.weights import cache_root, copy_into_cache, resolve_weights, sha256_file

PAYLOAD = b"latentmap test weights\n" * 5000  # ~115 kB, several download chunks at a small chunk size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test may see the user's cache or offline settings."""
    for var in ("LATENTMAP_CACHE", "LATENTMAP_OFFLINE", "HF_HUB_OFFLINE", "LM_TEST_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 (loopback only) serving ``tmp_path/served``; yields its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "model.bin").write_bytes(PAYLOAD)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep pytest output clean
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cache_root_precedence(monkeypatch, tmp_path):
    assert cache_root() == tmp_path / "home" / ".cache" / "latentmap"
    monkeypatch.setenv("LATENTMAP_CACHE", str(tmp_path / "envcache"))
    assert cache_root() == tmp_path / "envcache"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_cache_hit_is_returned_and_verified(tmp_path):
    cached = tmp_path / "cache" / "toy-model" / "model.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD)
    got = resolve_weights("toy-model", filename="model.bin", sha256=PAYLOAD_SHA, cache_dir=tmp_path / "cache",
                          url="http://127.0.0.1:9/never-contacted")
    assert got == cached


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTMAP_CACHE", str(tmp_path / "c"))
    cached = tmp_path / "c" / "toy" / "w.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_weights("toy", filename="w.bin") == cached


def test_model_name_is_sanitised_into_folder(tmp_path):
    cached = copy_into_cache("openclip:ViT-B-32/openai", _write(tmp_path / "src.bin", b"abc"), cache_dir=tmp_path / "c")
    assert cached.parent.name == "openclip_ViT-B-32_openai"
    assert resolve_weights("openclip:ViT-B-32/openai", filename="src.bin", cache_dir=tmp_path / "c") == cached


def test_env_var_beats_cache(monkeypatch, tmp_path):
    cached = tmp_path / "cache" / "toy" / "w.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    custom = _write(tmp_path / "mine.bin", b"mine")
    monkeypatch.setenv("LM_TEST_WEIGHTS", str(custom))
    got = resolve_weights("toy", filename="w.bin", env_var="LM_TEST_WEIGHTS", cache_dir=tmp_path / "cache", sha256="0" * 64)
    assert got == custom  # user-named files are not checksum-verified


def test_env_var_pointing_nowhere_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("LM_TEST_WEIGHTS", str(tmp_path / "missing.pkl"))
    with pytest.raises(LatentmapError, match=r"\$LM_TEST_WEIGHTS=.*missing\.pkl.* does not exist"):
        resolve_weights("toy", filename="w.bin", env_var="LM_TEST_WEIGHTS", cache_dir=tmp_path)


def test_explicit_path_beats_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("LM_TEST_WEIGHTS", str(_write(tmp_path / "env.bin", b"env")))
    explicit = _write(tmp_path / "explicit.bin", b"explicit")
    assert resolve_weights("toy", filename="w.bin", env_var="LM_TEST_WEIGHTS", path=explicit) == explicit
    with pytest.raises(LatentmapError, match=r"path='.*nope\.bin' does not exist"):
        resolve_weights("toy", filename="w.bin", path=tmp_path / "nope.bin")
    with pytest.raises(LatentmapError, match="is a directory"):
        resolve_weights("toy", filename="w.bin", path=tmp_path)


def test_download_from_loopback_server(server, tmp_path, monkeypatch):
    base, requests = server
    monkeypatch.setattr(weights, "CHUNK_BYTES", 4096)
    got = resolve_weights("toy", filename="model.bin", url=f"{base}/model.bin", sha256=PAYLOAD_SHA, cache_dir=tmp_path / "c")
    assert got == tmp_path / "c" / "toy" / "model.bin"
    assert got.read_bytes() == PAYLOAD
    assert sha256_file(got) == PAYLOAD_SHA
    assert [p.name for p in got.parent.iterdir()] == ["model.bin"]  # no temporary left behind
    # A second call is a cache hit: no new request.
    assert resolve_weights("toy", filename="model.bin", url=f"{base}/model.bin", sha256=PAYLOAD_SHA, cache_dir=tmp_path / "c") == got
    assert requests == ["/model.bin"]


def test_downloaded_checksum_mismatch_is_kept_aside(server, tmp_path):
    base, _ = server
    wrong = "ab" * 32
    with pytest.raises(LatentmapError) as info:
        resolve_weights("toy", filename="model.bin", url=f"{base}/model.bin", sha256=wrong, cache_dir=tmp_path / "c")
    message = str(info.value)
    assert wrong in message and PAYLOAD_SHA in message and "model.bin.sha256-mismatch" in message
    assert "\n" not in message
    folder = tmp_path / "c" / "toy"
    assert not (folder / "model.bin").exists()
    assert (folder / "model.bin.sha256-mismatch").read_bytes() == PAYLOAD


def test_corrupt_cached_file_is_replaced_by_a_fresh_download(server, tmp_path):
    base, requests = server
    cached = tmp_path / "c" / "toy" / "model.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    got = resolve_weights("toy", filename="model.bin", url=f"{base}/model.bin", sha256=PAYLOAD_SHA, cache_dir=tmp_path / "c")
    assert got.read_bytes() == PAYLOAD
    assert (cached.parent / "model.bin.sha256-mismatch").read_bytes() == b"truncated"
    assert requests == ["/model.bin"]


@pytest.mark.parametrize("var", ["LATENTMAP_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_message_says_what_where_and_how(var, monkeypatch, tmp_path):
    monkeypatch.setenv(var, "1")
    url = "http://127.0.0.1:9/stylegan2-ffhq-1024x1024.pkl"
    with pytest.raises(LatentmapError) as info:
        resolve_weights("stylegan2-ffhq", filename="stylegan2-ffhq-1024x1024.pkl", url=url,
                        env_var="LM_TEST_WEIGHTS", cache_dir=tmp_path / "c")
    message = str(info.value)
    assert "\n" not in message
    assert "stylegan2-ffhq-1024x1024.pkl is missing" in message
    assert url in message
    assert str(tmp_path / "c" / "stylegan2-ffhq" / "stylegan2-ffhq-1024x1024.pkl") in message
    assert "LM_TEST_WEIGHTS=/path/to/file" in message


def test_unreachable_server_is_one_clear_line(tmp_path):
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(LatentmapError) as info:
        resolve_weights("toy", filename="w.bin", url="http://127.0.0.1:9/w.bin", cache_dir=tmp_path)
    message = str(info.value)
    assert "download of http://127.0.0.1:9/w.bin failed" in message and "put it at" in message
    assert "\n" not in message
    assert not any(tmp_path.rglob("*.part"))


def test_no_url_and_not_cached(tmp_path):
    with pytest.raises(LatentmapError, match=r"'toy' not found: w\.bin is not in the cache; obtain the file and put it at"):
        resolve_weights("toy", filename="w.bin", cache_dir=tmp_path)


def test_sha256_file_is_memoised_and_notices_changes(tmp_path, monkeypatch):
    file = _write(tmp_path / "f.bin", PAYLOAD)
    assert sha256_file(file) == PAYLOAD_SHA
    changed_sha = hashlib.sha256(b"changed").hexdigest()
    calls = []
    real_sha = hashlib.sha256
    monkeypatch.setattr(weights.hashlib, "sha256", lambda *a: calls.append(1) or real_sha(*a))
    assert sha256_file(file) == PAYLOAD_SHA
    assert calls == []  # served from the memo
    file.write_bytes(b"changed")
    os.utime(file, ns=(1, 1))
    assert sha256_file(file) == changed_sha
    assert calls == [1]
    with pytest.raises(LatentmapError, match="cannot checksum"):
        sha256_file(tmp_path / "absent.bin")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
