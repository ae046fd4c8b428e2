"""Weight manager: registry, cache, mirror, offline, verified atomic download, safe loading.

Files are synthesised by the tests and served by a real ``http.server`` on 127.0.0.1.
Most tests use a tiny state dict and replace the SAM key/shape check with one for that
tiny layout; one test uses the real check with a random MobileSAM, and a slow test goes
through ``build_sam("vit_b")`` with a checkpoint made by Meta's ``segment_anything``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from grounded_sam import weights
from grounded_sam.weights import WeightEntry, WeightsError

# ----------------------------------------------------------------------------- fixtures


class FileServer:
    """A real HTTP server on 127.0.0.1 serving ``files`` (name -> bytes) from a thread.

    ``mode[name]`` changes how a file is served: ``"cut"`` announces the full length but
    closes after half the body; ``"slow"`` sends it in small chunks with pauses.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                with server._lock:
                    server.hits[name] = server.hits.get(name, 0) + 1
                body = server.files.get(name)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                mode = server.mode.get(name, "")
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mode == "slow":
                    step = max(1, len(body) // 20)
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i : i + step])
                        self.wfile.flush()
                        time.sleep(0.02)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self._thread.join(5)
            self.running = False


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GROUNDED_SAM_HOME", str(cache))
    for var in ("GROUNDED_SAM_OFFLINE", "HF_HUB_OFFLINE", "GROUNDED_SAM_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    return cache


@pytest.fixture
def mirror(server, home, monkeypatch) -> FileServer:
    monkeypatch.setenv("GROUNDED_SAM_MIRROR", server.url + "/")
    return server


TINY_SHAPES = {"image_encoder.w": (8, 8), "prompt_encoder.b": (4,), "mask_decoder.t": (2, 3)}


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) + 0.5 for k, s in TINY_SHAPES.items()}


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def tiny_check():
    """Replace the SAM key/shape check by one for the tiny layout; records the names checked."""
    calls: list[str] = []

    def check(entry, path, source):
        calls.append(entry.name)
        got = {k: tuple(v.shape) for k, v in weights.load_state_dict(path).items()}
        if got != TINY_SHAPES:
            raise WeightsError(f"{source} does not match SAM variant {entry.name!r}: {sorted(got)}")

    previous = weights.register_verifier("sam", check)
    yield calls
    weights.register_verifier("sam", previous)


def cache_files(cache: Path) -> list[str]:
    """Every file in the cache except the lock files."""
    if not cache.exists():
        return []
    return sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*")
        if p.is_file() and ".locks" not in p.parts
    )


VIT_B = "sam_vit_b_01ec64.pth"


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_model_with_real_urls():
    names = [e.name for e in weights.list()]
    for n in ["vit_b", "vit_l", "vit_h", "mobile_sam", "FastSAM-s", "FastSAM-x"]:
        assert n in names
    for size in "nsmlx":
        assert f"yolov8{size}-seg" in names
    assert "grounding-dino-tiny" in names and "grounding-dino-base" in names
    assert any(e.kind == "open_clip" and e.hub_id == "ViT-B-32/openai" for e in weights.list())

    vit_b = weights.get("vit_b")
    assert vit_b.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert weights.get("mobile_sam").url == (
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    )
    assert weights.get("FastSAM-s").url == (
        "https://github.com/ultralytics/assets/releases/download/v8.3.0/FastSAM-s.pt"
    )
    # no first-party sha256 is published for these files: none may be invented
    for e in weights.list():
        if e.kind in ("sam", "yolo"):
            assert e.sha256 is None, e.name
            assert e.size_mb and e.size_mb > 0 and e.license
    assert {e.kind for e in weights.list("yolo")} == {"yolo"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        vit_b.url = "http://evil"  # type: ignore[misc]


def test_registry_lookup_errors_and_hub_ids():
    with pytest.raises(ValueError, match=r"unknown weights 'vit_bb'.*vit_b.*Did you mean 'vit_b'"):
        weights.get("vit_bb")
    with pytest.raises(ValueError, match="kind must be one of"):
        weights.list("checkpoint")
    assert weights.get("IDEA-Research/grounding-dino-tiny").name == "grounding-dino-tiny"
    with pytest.raises(ValueError, match="64 lowercase hex"):
        WeightEntry("x", "sam", "http://h/x.pth", "x.pth", "01ec64", 1.0, "MIT", "page")
    with pytest.raises(ValueError, match="plain file name"):
        WeightEntry("x", "sam", "http://h/x.pth", "../x.pth", None, 1.0, "MIT", "page")
    with pytest.raises(ValueError, match="already registered"):
        weights.register(weights.get("vit_b"))


def test_cache_dir_and_mirror_url(home, monkeypatch):
    assert weights.cache_dir() == home
    assert weights.path("vit_b") == home / VIT_B
    assert weights.url_for("vit_b") == weights.get("vit_b").url
    monkeypatch.setenv("GROUNDED_SAM_MIRROR", "http://mirror.local/w/")
    assert weights.url_for("vit_b") == f"http://mirror.local/w/{VIT_B}"
    assert weights.url_for("FastSAM-s") == "http://mirror.local/w/FastSAM-s.pt"
    monkeypatch.delenv("GROUNDED_SAM_HOME")
    assert weights.cache_dir() == Path("~/.cache/grounded_sam").expanduser()


# ----------------------------------------------------------------------------- fetch


def test_fetch_through_mirror_is_byte_exact_and_reused_when_server_stops(mirror, home, tiny_check):
    body = to_bytes(tiny_state_dict())
    mirror.files[VIT_B] = body
    p = weights.fetch("vit_b")
    assert p == home / VIT_B
    assert p.read_bytes() == body
    assert tiny_check == ["vit_b"]  # verified by structure (no published sha256)
    digest = hashlib.sha256(body).hexdigest()
    assert (home / f"{VIT_B}.sha256").read_text().split() == [digest, VIT_B]
    assert cache_files(home) == [VIT_B, f"{VIT_B}.sha256"]
    assert weights.is_cached("vit_b") and weights.local_path("vit_b") == p

    mirror.stop()
    assert weights.fetch("vit_b") == p  # no network needed
    assert mirror.hits == {VIT_B: 1}
    assert tiny_check == ["vit_b"]  # trusted by its recorded sha256, not re-verified
    sd = weights.load_state_dict(p)
    for k, v in tiny_state_dict().items():
        assert torch.equal(sd[k], v)


def test_truncated_file_is_refused_and_cache_holds_nothing(mirror, home, tiny_check):
    body = to_bytes(tiny_state_dict())
    mirror.files[VIT_B] = body[: len(body) // 2]  # a truncated file, honest Content-Length
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        weights.fetch("vit_b")
    assert cache_files(home) == []


def test_interrupted_download_is_refused_and_cache_holds_nothing(mirror, home, tiny_check):
    body = to_bytes(tiny_state_dict())
    mirror.files[VIT_B] = body
    mirror.mode[VIT_B] = "cut"  # announces len(body), sends half, closes
    with pytest.raises(WeightsError, match=r"interrupted|truncated"):
        weights.fetch("vit_b")
    assert cache_files(home) == []
    assert tiny_check == []  # never got as far as verification


def test_wrong_structure_is_refused(mirror, home, tiny_check):
    sd = tiny_state_dict()
    sd["extra.key"] = torch.ones(3)
    mirror.files[VIT_B] = to_bytes(sd)
    with pytest.raises(WeightsError, match=r"failed verification for 'vit_b'.*extra.key"):
        weights.fetch("vit_b")
    assert cache_files(home) == []


def test_http_error_names_the_url(mirror, home):
    with pytest.raises(WeightsError, match=rf"HTTP 404.*{mirror.url}/{VIT_B}") as info:
        weights.fetch("vit_b")
    msg = str(info.value)  # and says what to do
    assert f"check that GROUNDED_SAM_MIRROR ({mirror.url}/) holds {VIT_B}" in msg
    assert f"by hand to {home / VIT_B}" in msg and "proxy" in msg
    assert cache_files(home) == []


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_server_message_says_how_to_fix_it(home):
    url = f"{_closed_port_url()}/unreachable.pth"
    weights.register(
        WeightEntry("unreachable-test", "sam", url, "unreachable.pth", None, 0.1, "MIT", "t")
    )
    try:
        with pytest.raises(WeightsError, match=rf"download failed: cannot open {url}") as info:
            weights.fetch("unreachable-test")
    finally:
        weights.unregister("unreachable-test")
    msg = str(info.value)
    assert "check the network connection and proxy settings (HTTPS_PROXY" in msg
    assert "set GROUNDED_SAM_MIRROR to a server or file:// folder that holds unreachable.pth" in msg
    assert f"or download {url} by hand to {home / 'unreachable.pth'}" in msg
    assert cache_files(home) == []


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_grounded_sam_home_that_cannot_be_a_folder(mirror, tmp_path, monkeypatch, where):
    mirror.files[VIT_B] = to_bytes(tiny_state_dict())
    f = tmp_path / "homefile"
    f.write_text("x")
    home = f if where == "file" else f / "cache"
    monkeypatch.setenv("GROUNDED_SAM_HOME", str(home))
    with pytest.raises(WeightsError) as info:
        weights.fetch("vit_b")
    msg = str(info.value)
    assert f"GROUNDED_SAM_HOME={str(home)!r} cannot be used as the weights cache" in msg
    assert f"{f} is a file, not a folder" in msg
    assert "Point GROUNDED_SAM_HOME at a folder you can write" in msg
    assert mirror.hits == {} and f.read_text() == "x"


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs a non-root POSIX user"
)
def test_grounded_sam_home_without_write_permission(mirror, home, tiny_check):
    mirror.files[VIT_B] = to_bytes(tiny_state_dict())
    home.mkdir()
    home.chmod(0o500)
    try:
        with pytest.raises(WeightsError, match=r"GROUNDED_SAM_HOME=.*permission denied"):
            weights.fetch("vit_b")
    finally:
        home.chmod(0o700)


def test_download_to_a_path_under_a_file(server, tmp_path):
    server.files["w.bin"] = b"w" * 10
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"cannot download to .*f/w.bin.*is a file, not a folder"):
        weights.download(f"{server.url}/w.bin", tmp_path / "f" / "w.bin")
    assert server.hits == {}


@pytest.mark.parametrize("var", ["GROUNDED_SAM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_with_empty_cache_names_model_path_and_url(mirror, home, monkeypatch, var):
    mirror.files[VIT_B] = to_bytes(tiny_state_dict())
    monkeypatch.setenv(var, "1")
    with pytest.raises(WeightsError) as info:
        weights.fetch("vit_b")
    msg = str(info.value)
    assert "'vit_b'" in msg
    assert str(home / VIT_B) in msg
    assert weights.get("vit_b").url in msg
    assert mirror.hits == {}  # the network was never touched
    assert cache_files(home) == []
    with pytest.raises(WeightsError, match="offline"):
        weights.download(f"{mirror.url}/{VIT_B}", home / "x.pth")
    assert mirror.hits == {}


def test_offline_uses_hand_placed_file_and_file_mirror(home, tmp_path, monkeypatch, tiny_check):
    monkeypatch.setenv("GROUNDED_SAM_OFFLINE", "1")
    body = to_bytes(tiny_state_dict(1))
    # a file copied into the cache by hand is verified once, then trusted by its sha256
    home.mkdir(parents=True)
    (home / VIT_B).write_bytes(body)
    assert weights.fetch("vit_b") == home / VIT_B
    assert tiny_check == ["vit_b"]
    assert (home / f"{VIT_B}.sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()

    # a file:// mirror is local, so it works offline
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    (mirror_dir / "mobile_sam.pt").write_bytes(body)
    monkeypatch.setenv("GROUNDED_SAM_MIRROR", mirror_dir.as_uri())
    assert weights.fetch("mobile_sam").read_bytes() == body


def test_hand_placed_bad_file_is_refused(home, monkeypatch, tiny_check):
    home.mkdir(parents=True)
    (home / VIT_B).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        weights.fetch("vit_b")
    assert not (home / f"{VIT_B}.sha256").exists()


def test_changed_file_is_detected_and_force_redownloads(mirror, home, tiny_check):
    body = to_bytes(tiny_state_dict())
    mirror.files[VIT_B] = body
    p = weights.fetch("vit_b")
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"has changed since it was verified.*--force"):
        weights.fetch("vit_b")
    assert weights.fetch("vit_b", force=True).read_bytes() == body
    assert weights.fetch("vit_b") == p
    assert mirror.hits[VIT_B] == 2


def test_force_keeps_the_old_file_when_the_new_download_fails(mirror, home, tiny_check):
    body = to_bytes(tiny_state_dict())
    mirror.files[VIT_B] = body
    p = weights.fetch("vit_b")
    mirror.mode[VIT_B] = "cut"
    with pytest.raises(WeightsError):
        weights.fetch("vit_b", force=True)
    assert p.read_bytes() == body
    assert cache_files(home) == [VIT_B, f"{VIT_B}.sha256"]


def test_fetch_with_real_sam_structure_check(mirror, home):
    """No stand-in: a random MobileSAM state dict passes the real key/shape check, vit_b's
    tiny stand-in file does not."""
    from grounded_sam.model import build

    sam = build.build_sam("mobile_sam", pretrained=False, device="cpu")
    sd = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in sam.state_dict().items()
    }
    mirror.files["mobile_sam.pt"] = to_bytes(sd)
    p = weights.fetch("mobile_sam")
    loaded = weights.load_state_dict(p)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)

    mirror.files[VIT_B] = to_bytes(tiny_state_dict())
    with pytest.raises(WeightsError, match="does not match SAM variant 'vit_b'"):
        weights.fetch("vit_b")
    assert not (home / VIT_B).exists()


# ----------------------------------------------------------------------------- safe loading


class WritesAFile:
    """A pickle payload: unpickling it runs exec(), which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(mirror, home, tmp_path, tiny_check):
    marker = tmp_path / "pwned.txt"
    sd = tiny_state_dict()
    sd["image_encoder.w"] = WritesAFile(marker)  # type: ignore[assignment]
    body = to_bytes(sd)
    mirror.files[VIT_B] = body
    with pytest.raises(WeightsError, match="pickled objects other than tensors"):
        weights.fetch("vit_b")
    assert not marker.exists()
    assert cache_files(home) == []

    # a user-named file is refused the same way by the safe loader
    local = tmp_path / "evil.pth"
    local.write_bytes(body)
    with pytest.raises(ValueError, match="pickled objects other than tensors"):
        weights.load_state_dict(local)
    assert not marker.exists()

    # the payload is real: an unsafe load would have written the file
    torch.load(local, weights_only=False)
    assert marker.read_text() == "pwned"


def test_malicious_ultralytics_file_is_refused_without_unpickling(mirror, home, tmp_path):
    marker = tmp_path / "pwned.txt"
    mirror.files["FastSAM-s.pt"] = to_bytes({"model": WritesAFile(marker), "version": "8.3.0"})
    with pytest.raises(WeightsError, match=r"references (__builtin__|builtins)\.exec"):
        weights.fetch("FastSAM-s")
    assert not marker.exists()
    assert cache_files(home) == []

    mirror.files["FastSAM-x.pt"] = to_bytes(tiny_state_dict())  # a torch file, not ultralytics
    with pytest.raises(WeightsError, match="not an ultralytics checkpoint"):
        weights.fetch("FastSAM-x")
    mirror.files["yolov8n-seg.pt"] = b"<html>rate limited</html>"
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        weights.fetch("yolov8n-seg")
    assert cache_files(home) == []


def test_ultralytics_checkpoint_fetch_and_load(mirror, home, tmp_path, monkeypatch):
    """A checkpoint saved by ultralytics itself passes the check and loads in ultralytics."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ul"))
    ultralytics = pytest.importorskip("ultralytics")
    src = tmp_path / "src.pt"
    ultralytics.YOLO("yolov8n-seg.yaml", verbose=False).save(src)
    mirror.files["yolov8n-seg.pt"] = src.read_bytes()
    p = weights.fetch("yolov8n-seg")
    assert p == home / "yolov8n-seg.pt" and p.read_bytes() == src.read_bytes()
    model = ultralytics.YOLO(str(p))
    assert model.task == "segment"


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_fetches_in_threads_download_once(mirror, home, tiny_check):
    body = to_bytes(tiny_state_dict())
    mirror.files[VIT_B] = body
    mirror.mode[VIT_B] = "slow"
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(weights.fetch("vit_b"))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == [home / VIT_B] * 4
    assert mirror.hits == {VIT_B: 1}
    assert (home / VIT_B).read_bytes() == body
    assert cache_files(home) == [VIT_B, f"{VIT_B}.sha256"]


def test_concurrent_fetches_in_two_processes_end_with_one_good_file(server, home, tmp_path):
    body = to_bytes(tiny_state_dict()) + b"\0" * 200_000  # larger, so the two overlap
    server.files["custom.pth"] = body
    server.mode["custom.pth"] = "slow"
    digest = hashlib.sha256(body).hexdigest()
    script = (
        "import sys\n"
        "from grounded_sam import weights\n"
        "weights.register(weights.WeightEntry('custom', 'sam', sys.argv[1], 'custom.pth',"
        " sys.argv[2], 0.2, 'MIT', 'test'))\n"
        "print(weights.fetch('custom'))\n"
    )
    cmd = [sys.executable, "-c", script, f"{server.url}/custom.pth", digest]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == str(home / "custom.pth")
    assert (home / "custom.pth").read_bytes() == body
    assert server.hits == {"custom.pth": 1}
    assert cache_files(home) == ["custom.pth", "custom.pth.sha256"]


# ----------------------------------------------------------------------------- download()


def test_download_checks_sha256_and_is_atomic(server, tmp_path):
    body = b"weights" * 1000
    server.files["w.bin"] = body
    good = hashlib.sha256(body).hexdigest()
    dest = tmp_path / "d" / "w.bin"
    assert weights.download(f"{server.url}/w.bin", dest, sha256=good) == dest
    assert dest.read_bytes() == body
    # the mode open() would give, not mkstemp's 0600: a shared cache stays readable
    from grounded_sam._files import file_mode

    assert dest.stat().st_mode & 0o777 == file_mode()
    assert weights.download(f"{server.url}/w.bin", dest, sha256=good) == dest  # already there
    assert server.hits == {"w.bin": 1}

    server.files["w.bin"] = b"tampered" * 1000
    with pytest.raises(WeightsError, match=rf"sha256 mismatch.*expected {good}"):
        weights.download(f"{server.url}/w.bin", tmp_path / "d" / "w2.bin", sha256=good)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".locks", "w.bin"]
    with pytest.raises(ValueError, match="64 hex digits"):
        weights.download(f"{server.url}/w.bin", dest, sha256="01ec64")


def test_sha256_pinned_entry_is_checked(server, home):
    body = to_bytes(tiny_state_dict())
    server.files["pinned.pth"] = body
    wrong = hashlib.sha256(b"something else").hexdigest()
    weights.register(
        WeightEntry(
            "pinned-test", "sam", f"{server.url}/pinned.pth", "pinned.pth", wrong, 0.1, "MIT", "t"
        ),
        overwrite=True,
    )
    try:
        with pytest.raises(WeightsError, match="sha256 mismatch"):
            weights.fetch("pinned-test")
        assert cache_files(home) == []
    finally:
        weights.unregister("pinned-test")


# ----------------------------------------------------------------------------- hub entries


def _fake_hf_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def test_hub_entries_resolve_through_the_library_cache(home, tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub.constants")
    hf_cache = tmp_path / "hf"
    hf_cache.mkdir()
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("GROUNDED_SAM_OFFLINE", "1")

    with pytest.raises(WeightsError, match=r"'grounding-dino-tiny'.*not in the Hugging Face cache"):
        weights.fetch("grounding-dino-tiny")
    assert not weights.is_cached("grounding-dino-tiny")
    with pytest.raises(ValueError, match="hub entry"):
        weights.path("grounding-dino-tiny")

    snap = _fake_hf_snapshot(hf_cache, "IDEA-Research/grounding-dino-tiny", {"config.json": b"{}"})
    assert weights.fetch("grounding-dino-tiny") == snap
    assert weights.local_path("IDEA-Research/grounding-dino-tiny") == snap

    with pytest.raises(WeightsError, match=r"'clip-ViT-B-32-openai'.*offline"):
        weights.fetch("clip-ViT-B-32-openai")
    clip = _fake_hf_snapshot(
        hf_cache, "timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b"x"}
    )
    assert weights.fetch("clip-ViT-B-32-openai") == clip / "open_clip_model.safetensors"


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_build_sam_fetches_official_vit_b_through_the_mirror(mirror, home):
    """Meta's own vit_b (random, perturbed) saved in the official format, served by HTTP,
    fetched and verified by ``build_sam("vit_b")`` with no checkpoint argument."""
    segment_anything = pytest.importorskip("segment_anything")
    from grounded_sam.model import build

    torch.manual_seed(0)
    ref = segment_anything.sam_model_registry["vit_b"]()
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in ref.state_dict().items()}
    del ref
    mirror.files[VIT_B] = to_bytes(sd)
    sam = build.build_sam("vit_b", device="cpu")
    assert (home / VIT_B).is_file() and (home / f"{VIT_B}.sha256").is_file()
    ours = sam.state_dict()
    assert ours.keys() == sd.keys()
    assert all(torch.equal(ours[k], sd[k]) for k in sd)
    mirror.stop()
    build.build_sam("vit_b", device="cpu")  # from the cache, server gone
    assert mirror.hits == {VIT_B: 1}


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"PK\x03\x04" + b"\0" * 100, "a zip archive cut short (truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "it is a PNG image; pass the .pt/.pth checkpoint"),
        (b"<!DOCTYPE html><html>", "an HTML page"),
        (b"version https://git-lfs.github.com/spec/v1\n", "a Git LFS pointer"),
        (b"hello world", "not a zip archive nor a pickle (it starts with b'hell')"),
    ],
)
def test_what_a_wrong_checkpoint_file_is(tmp_path, content, says):
    """A file that is no checkpoint is named for what it is; the advice fits a user's own file
    as well as a cached download (no 'delete it', which would be wrong for a user's photo)."""
    from grounded_sam.hub.safety import load_state_dict

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="is not a readable torch checkpoint") as e:
        load_state_dict(path)
    assert says in str(e.value) and "delete it" not in str(e.value)
    assert path.read_bytes() == content
