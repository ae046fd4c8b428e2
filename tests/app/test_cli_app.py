"""``grounded-sam app``: serving, the printed URL, Ctrl-C, and argument errors."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import make_images, read_doc, rect_mask

from grounded_sam.masks import encode_rle
from grounded_sam.testing.pipeline import (
    error_lines,
    gdino_dir,
    gdino_threshold,
    run_cli,
    sam_args,
)


def model_args() -> list[str]:
    return [
        *sam_args(),
        "--detector-model",
        str(gdino_dir()),
        "--box-threshold",
        str(gdino_threshold(2)),
    ]


class AppProcess:
    """``python -m grounded_sam app ...`` until it prints its URL."""

    def __init__(self, argv: list[str], timeout: float = 300) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grounded_sam", "app", *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        self.url = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"open (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.proc.kill()
            raise AssertionError(f"no URL printed: {self.lines} {self.proc.stderr.read()}")

    def stop(self, sig=signal.SIGINT) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, "".join(self.lines) + out, err


def test_serves_saves_and_stops_on_ctrl_c(tmp_path):
    images = make_images(tmp_path / "images")
    ds = tmp_path / "ds"
    app = AppProcess([ds, "--images", images, "--classes", "cat,dog", "--port", 0, *model_args()])
    try:
        assert app.url.startswith("http://127.0.0.1:") and "token" not in app.url
        base = app.url.rstrip("/")
        assert "3 images" in "".join(app.lines) and "3 not labelled" in "".join(app.lines)
        c = httpx.Client(base_url=base, timeout=120)
        assert c.get("/").status_code == 200
        rows = c.get("/api/images").json()["images"]
        chelsea = next(r for r in rows if r["file_name"] == "chelsea.png")
        pred = c.post(f"/api/images/{chelsea['id']}/predict", json={"points": [[100, 70, 1]]})
        assert pred.status_code == 200
        seg = encode_rle(rect_mask((150, 226), 10, 10, 90, 90))[0]
        r = c.post(
            f"/api/images/{chelsea['id']}/annotations",
            json={"segmentation": seg, "category": "cat"},
        )
        assert r.status_code == 201
    finally:
        rc, out, err = app.stop(signal.SIGINT)
    assert rc == 0, err
    assert "stopped; every change is saved" in out
    assert "Traceback" not in err
    doc = read_doc(ds)
    assert [a["segmentation"] for a in doc["annotations"]] == [seg]
    assert json.loads((ds / "app.json").read_text())["sources"][0]["path"] == str(images.resolve())


def test_other_host_warns_and_requires_a_token(tmp_path):
    images = make_images(tmp_path / "images")
    app = AppProcess(
        [
            tmp_path / "ds",
            "--images",
            images,
            "--classes",
            "cat",
            "--host",
            "0.0.0.0",
            "--port",
            0,
            *model_args(),
        ]
    )
    try:
        m = re.search(r":(\d+)/\?token=(\S+)", app.url)
        assert m, app.url
        port, token = m.groups()
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/api/info").status_code == 401
        ok = httpx.get(base + "/api/info", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
    finally:
        rc, _, err = app.stop(signal.SIGTERM)
    assert "warning: --host 0.0.0.0" in err and rc == 0


def test_port_in_use_is_one_error_line(tmp_path, capsys):
    images = make_images(tmp_path / "images")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, _, err = run_cli(
            "app",
            [tmp_path / "ds", "--images", images, "--classes", "cat", "--port", port, *sam_args()],
            capsys,
        )
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "70000"], "--port"),
        (["--max-body-mb", "0"], "--max-body-mb"),
        (["--cache-size", "0"], "--cache-size"),
        (["--token", " "], "--token"),
        (["--sam-checkpoint", "/no/such.pt"], "--sam-checkpoint"),
        (["--classes", "cat", "--images", "/no/such/dir"], "no such file"),
        ([], "no annotations.json"),
        (["--classes", "cat,,dog", "--images", "IMAGES"], "empty class name"),
        (["--classes", "cat", "--images", "IMAGES", "--box-threshold", "3"], "[0, 1]"),
        (["--classes", "cat", "--images", "IMAGES", "--yolo", "x.pt"], "--yolo"),
    ],
)
def test_argument_errors(tmp_path, capsys, argv, needle):
    images = make_images(tmp_path / "images")
    argv = [str(images) if a == "IMAGES" else a for a in argv]
    rc, out, err = run_cli("app", [tmp_path / "ds", "--port", "0", *argv], capsys)
    assert rc == 2, (out, err)
    lines = error_lines(err)
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_listening_sockets_turn_nagle_off():
    """uvicorn sends a response's headers and body in two writes; with Nagle on, every request
    after the first on a kept-alive connection waited for the client's delayed ACK (44 ms on
    loopback). asyncio disables Nagle only on sockets created with proto IPPROTO_TCP, which
    accepted connections inherit, so both the CLI's and BackgroundServer's sockets need it."""
    from grounded_sam.app.server import BackgroundServer
    from grounded_sam.cli.app import _bind

    sock = _bind("127.0.0.1", 0)
    server = BackgroundServer(lambda scope, receive, send: None)
    try:
        for s in (sock, server._sock):
            assert s.proto == socket.IPPROTO_TCP
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
        server._sock.close()


def test_accepted_connections_have_nagle_off():
    """What asyncio does with the listening socket's accepted connections: the server side of
    a real connection to the app has TCP_NODELAY set."""
    from grounded_sam.app.server import tcp_socket

    listener = tcp_socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        assert conn.proto == socket.IPPROTO_TCP  # the condition of asyncio's _set_nodelay
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for s in (conn, client, listener):
            s.close()
