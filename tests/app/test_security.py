"""Token, Host header and body size checks, and the file-name rules."""

from __future__ import annotations

import socket

import pytest
from test_api import one_line_error, raw_get

from grounded_sam.app.security import PathRefused, check_file_name, is_loopback


@pytest.fixture()
def app(label_dataset, start_app):
    root, _ = label_dataset
    return start_app(root, prefetch=False, token="s3cret", max_body=64 * 1024)


def test_token_is_required_on_the_api(app):
    c = app.client
    msg = one_line_error(c.get("/api/info"), 401)
    assert "token" in msg
    one_line_error(c.get("/api/info", headers={"Authorization": "Bearer nope"}), 401)
    one_line_error(c.get("/api/images/2/file", params={"token": "s3cre"}), 401)
    assert c.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/api/info", headers={"X-Grounded-SAM-Token": "s3cret"}).status_code == 200
    assert c.get("/api/images/2/file", params={"token": "s3cret"}).status_code == 200
    # the page itself holds no data: served without the token (its script sends it)
    assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200


def test_host_header_must_be_ours(app):
    """A page on evil.example that resolves its name to 127.0.0.1 (DNS rebinding) is refused."""
    status, _, body = raw_get(app.url, "/api/info", {"Host": "evil.example:80"})
    assert status == 400 and "Host" in body
    status, _, _ = raw_get(app.url, "/", {"Host": "evil.example"})
    assert status == 400
    status, _, _ = raw_get(
        app.url,
        "/api/info",
        {"Host": f"localhost:{app.server.port}", "X-Grounded-SAM-Token": "s3cret"},
    )
    assert status == 200


def test_body_limit(app):
    h = {"X-Grounded-SAM-Token": "s3cret"}
    big = b"x" * (64 * 1024 + 1)
    r = app.client.post("/api/segment", headers=h, files={"image": ("a.png", big)})
    assert "limit" in one_line_error(r, 413)
    r = app.client.post(
        "/api/images/2/annotations",
        headers={**h, "content-type": "application/json"},
        content=b'{"segmentation": "' + big + b'"}',
    )
    one_line_error(r, 413)

    # no Content-Length (chunked): cut off at the limit as well
    def chunks():
        for _ in range(100):
            yield b"y" * 1024

    r = app.client.post(
        "/api/images/2/predict", headers={**h, "content-type": "application/json"}, content=chunks()
    )
    one_line_error(r, 413)
    # a body under the limit goes through
    ok = app.client.post("/api/images/2/done", headers=h, json={"done": False})
    assert ok.status_code == 200


def test_body_limit_with_a_lying_client(app):
    """A client announcing a huge Content-Length is answered 413 before it sends anything."""
    host, port = "127.0.0.1", app.server.port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Grounded-SAM-Token: s3cret\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 999999999\r\n\r\n"
        )
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../x.png",
        "a/../../x.png",
        "a//b.png",
        "./a.png",
        "C:x.png",
        "a\\b.png",
        "a\x00.png",
        "a/./b.png",
        "..",
        "a/..",
    ],
)
def test_file_names_refused(name):
    with pytest.raises(PathRefused):
        check_file_name(name)


@pytest.mark.parametrize("name", ["a.png", "sub/a b.png", "..a.png", "a..b/c.png", "ünï/çödé.jpg"])
def test_file_names_allowed(name):
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_loopback(host, local):
    assert is_loopback(host) is local
