"""The annotation server: the page, its static files and the JSON API (see ``docs/app.md``).

:func:`create_app` builds the ASGI app from a :class:`~grounded_sam.app.store.DatasetStore`
and a :class:`~grounded_sam.app.service.Segmenter`; :func:`serve` runs it with uvicorn.

Errors are one line of JSON, ``{"error": "..."}``, never a traceback: 400 malformed request
(bad JSON, bad form, a refused path), 401 missing token, 404 unknown image / annotation /
path, 405 wrong method, 409 an edit that conflicts with the dataset, 413 body too large,
415 not JSON, 422 a well-formed request with bad values (a point outside the image, an unknown
class), 503 text prompts while the detector is unavailable or a dataset that cannot be saved
(full disk), 500 a bug (logged on the server).
"""

# no ``from __future__ import annotations``: FastAPI reads the route signatures' annotations
# (``request: Request`` of the closures below) as objects
import io
import json
import logging
import signal
from pathlib import Path
from typing import Any

from grounded_sam.app.security import DEFAULT_MAX_BODY, Guard, PathRefused, check_file_name
from grounded_sam.app.service import Segmenter, Unavailable, result_annotations
from grounded_sam.app.store import Conflict, DatasetStore, NotFound, SaveFailed
from grounded_sam.errors import GroundedSAMError, InputError, require

__all__ = ["create_app", "serve", "STATIC_DIR"]

log = logging.getLogger("grounded_sam.app")

STATIC_DIR = Path(__file__).parent / "static"

# formats every current browser draws itself; others (TIFF...) are re-encoded as PNG
_BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                    "GIF": "image/gif", "BMP": "image/bmp"}  # fmt: skip


class HTTPError(Exception):
    """An error answered with ``status`` and one line of JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, PathRefused):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, (Unavailable, SaveFailed)):
        return 503
    if isinstance(exc, GroundedSAMError):
        return 422
    return 500


# ----------------------------------------------------------------------------- schemas
def _schemas():
    """Request bodies (pydantic, unknown fields refused so a typo is an error)."""
    from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt

    Number = StrictInt | StrictFloat

    class Body(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Predict(Body):
        points: list[list[Number]] | None = None
        box: list[Number] | None = None
        mask_input: str | None = None
        multimask: StrictBool | None = None

    class Text(Body):
        text: str | list[str]

    class NewAnnotation(Body):
        segmentation: dict[str, Any]
        category_id: StrictInt | None = None
        category: str | None = None
        score: Number | None = None
        mask_score: Number | None = None
        prompt: str | None = None
        reviewed: StrictBool | None = None
        id: StrictInt | None = None

    class AnnotationPatch(Body):
        segmentation: dict[str, Any] | None = None
        category_id: StrictInt | None = None
        category: str | None = None
        reviewed: StrictBool | None = None

    class Done(Body):
        done: StrictBool = True

    class Naming(Body):
        category_id: StrictInt | None = None
        category: str | None = None

    class Prefetch(Body):
        ids: list[StrictInt]

    return {
        "predict": Predict,
        "text": Text,
        "new": NewAnnotation,
        "patch": AnnotationPatch,
        "done": Done,
        "naming": Naming,
        "prefetch": Prefetch,
    }


def _validation_message(err) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: {msg}{extra}"


# ----------------------------------------------------------------------------- app
def create_app(
    store: DatasetStore,
    segmenter: Segmenter,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    allowed_hosts=None,
):
    """The ASGI app (FastAPI wrapped in :class:`~grounded_sam.app.security.Guard`).

    Args:
        store: the dataset.
        segmenter: the models.
        token: required on ``/api/`` requests when set.
        max_body: request body limit in bytes (413 over it).
        allowed_hosts: host names the ``Host`` header may carry (``None``: any).
    """
    fastapi = require(
        "fastapi", feature="grounded-sam app", install='pip install "grounded-sam[app]"'
    )
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.staticfiles import StaticFiles

    schemas = _schemas()
    app = fastapi.FastAPI(
        title="grounded-sam app",
        docs_url=None,  # the Swagger page loads scripts from a CDN; the schema is enough
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.store = store
    app.state.segmenter = segmenter

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        messages = {404: f"not found: {request.url.path}", 405: "method not allowed"}
        message = messages.get(exc.status_code) or str(exc.detail)
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc):
        return error(422, _validation_message(exc))

    async def _known_error(request, exc):
        return error(_status_of(exc), getattr(exc, "message", None) or str(exc))

    app.add_exception_handler(HTTPError, _known_error)
    app.add_exception_handler(GroundedSAMError, _known_error)

    @app.exception_handler(Exception)
    async def _bug(request, exc):
        # starlette logs the traceback on the server after this answer; the client gets a line
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    async def body(request: Request, kind: str):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            # also what keeps a cross-site form post from editing the dataset
            raise HTTPError(415, f"expected Content-Type application/json, got {ctype or 'none'!r}")
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"malformed JSON: {e}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, f"expected a JSON object, got {type(data).__name__}")
        try:
            return schemas[kind].model_validate(data)
        except ValidationError as e:
            raise HTTPError(422, _validation_message(e)) from None

    def doc(kind: str) -> dict:
        """The request body of a JSON route in the OpenAPI schema (bodies are parsed by
        ``body()`` for one-line errors, so FastAPI would not know them otherwise)."""
        schema = schemas[kind].model_json_schema()
        return {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
        }

    def fields(model) -> dict:
        return model.model_dump(exclude_none=True)

    def image_id_of(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise HTTPError(404, f"no image with id {value!r}") from None

    def ann_id_of(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise HTTPError(404, f"no annotation with id {value!r}") from None

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ------------------------------------------------------------------ reading
    @app.get("/api/info")
    def info():
        return {
            "dataset": store.info(),
            "categories": store.categories,
            "model": {
                "sam": getattr(segmenter.predictor.model, "name", ""),
                "detector": segmenter.pipe.detector_name,
                "text_prompts": segmenter.detector_error is None,
                "detector_error": segmenter.detector_error,
                "detector_ready": segmenter.detector_ready,
                "sam_id": None if segmenter.disk is None else segmenter.disk.sam_id,
            },
            "cache": segmenter.stats(),
            "limits": {"max_body": max_body},
            "revision": store.revision,
        }

    @app.get("/api/images")
    def images(status: str | None = None):
        rows = store.list_images()
        if status is not None:
            if status not in ("todo", "review", "labelled"):
                raise HTTPError(422, f"status must be todo, review or labelled, got {status!r}")
            rows = [r for r in rows if r["status"] == status]
        return {"images": rows, "counts": store.counts(), "revision": store.revision}

    @app.get("/api/images/{image_id}")
    def image(image_id: str, next: str | None = None):  # noqa: A002 - the query's name
        iid = image_id_of(image_id)
        detail = store.image_detail(iid)
        ahead = store.following(iid, 2)
        if next:
            try:
                ahead = [int(v) for v in next.split(",") if v.strip()][:4]
            except ValueError:
                raise HTTPError(422, f"next must be image ids like 12,13, got {next!r}") from None
        refs = [store.ref(iid)] + [r for r in (store.find_ref(i) for i in ahead) if r]
        segmenter.prefetch(refs)
        detail["cached"] = segmenter.cached(refs[0]) if refs[0].known() else False
        return detail

    def file_response(ref):
        try:
            fmt, orientation = _probe(ref.path)
        except OSError as e:
            raise HTTPError(422, f"{ref.name}: not a readable image ({e})") from None
        if fmt in _BROWSER_FORMATS and orientation in (None, 1):
            return FileResponse(ref.path, media_type=_BROWSER_FORMATS[fmt])
        # EXIF-rotated or a format browsers do not draw: send the pixels the model sees
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(ref.load()).save(buf, format="PNG", compress_level=1)
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: str):
        return file_response(store.ref(image_id_of(image_id)))

    @app.get("/api/files/{file_name:path}")
    def named_file(file_name: str):
        check_file_name(file_name)
        return file_response(store.ref_by_name(file_name))

    # ------------------------------------------------------------------ models
    @app.post("/api/images/{image_id}/predict", openapi_extra=doc("predict"))
    async def predict(image_id: str, request: Request):
        req = await body(request, "predict")
        ref = store.ref(image_id_of(image_id))
        return await run_in_threadpool(
            segmenter.predict, ref, req.points, req.box, req.mask_input, req.multimask
        )

    @app.post("/api/images/{image_id}/text", openapi_extra=doc("text"))
    async def text(image_id: str, request: Request):
        req = await body(request, "text")
        iid = image_id_of(image_id)
        ref = store.ref(iid)
        from grounded_sam.phrases import parse_phrases

        phrases = parse_phrases(req.text)
        result = await run_in_threadpool(segmenter.segment_ref, ref, phrases)
        instances = result_annotations(result)
        for inst in instances:
            inst["category_id"] = store.category_for_phrase(inst["label"])
            inst["prompt"] = inst["label"]
        return {"image_id": iid, "phrases": phrases, "instances": instances}

    @app.post("/api/prefetch", openapi_extra=doc("prefetch"))
    async def prefetch(request: Request):
        req = await body(request, "prefetch")
        refs = [store.ref(i) for i in req.ids[:8]]
        segmenter.prefetch(refs)
        return {"queued": [r.name for r in refs]}

    segment_form = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            "text": {"type": "string", "description": "phrases, e.g. 'a cat. a dog.'"},
            "points": {"type": "string", "description": "JSON [[x, y, label], ...]"},
            "boxes": {"type": "string", "description": "JSON [[x0, y0, x1, y1], ...]"},
            "multimask": {"type": "boolean", "description": "best of 3 masks per prompt"},
        },
    }

    @app.post(
        "/api/segment",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": segment_form}},
            }
        },
    )
    async def segment(request: Request):
        return await _segment(request, segmenter)

    # ------------------------------------------------------------------ editing
    @app.post("/api/images/{image_id}/annotations", status_code=201, openapi_extra=doc("new"))
    async def add_annotation(image_id: str, request: Request):
        req = await body(request, "new")
        return await run_in_threadpool(store.add_annotation, image_id_of(image_id), fields(req))

    @app.get("/api/annotations/{ann_id}")
    def get_annotation(ann_id: str):
        return store.annotation(ann_id_of(ann_id))

    @app.patch("/api/annotations/{ann_id}", openapi_extra=doc("patch"))
    async def patch_annotation(ann_id: str, request: Request):
        req = await body(request, "patch")
        return await run_in_threadpool(store.update_annotation, ann_id_of(ann_id), fields(req))

    @app.delete("/api/annotations/{ann_id}")
    async def delete_annotation(ann_id: str):
        return await run_in_threadpool(store.delete_annotation, ann_id_of(ann_id))

    @app.post("/api/images/{image_id}/done", openapi_extra=doc("done"))
    async def done(image_id: str, request: Request):
        req = await body(request, "done")
        return await run_in_threadpool(store.set_done, image_id_of(image_id), req.done)

    @app.post("/api/candidates/{cand_id}/accept", status_code=201, openapi_extra=doc("naming"))
    async def accept_candidate(cand_id: str, request: Request):
        req = await body(request, "naming")
        return await run_in_threadpool(store.accept_candidate, cand_id, fields(req))

    @app.post("/api/candidates/{cand_id}/reject")
    async def reject_candidate(cand_id: str):
        return await run_in_threadpool(store.reject_candidate, cand_id)

    return Guard(app, max_body=max_body, token=token, allowed_hosts=allowed_hosts)


def _probe(path: Path) -> tuple[str | None, int | None]:
    """(PIL format, EXIF orientation or None) without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112) if im.format in ("JPEG", "WEBP", "PNG") else None
            return im.format, orientation
    except UnidentifiedImageError as e:
        raise OSError(str(e)) from None


# ------------------------------------------------------------------------- /api/segment
def _form_bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise InputError(f"{name} must be true or false, got {value!r}")


def _form_json(value: str, name: str, example: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise HTTPError(400, f"{name}: malformed JSON ({e}); expected e.g. {example}") from None


async def _segment(request, segmenter: Segmenter) -> dict:
    """``POST /api/segment``: multipart ``image`` + ``text`` | ``points`` and/or ``boxes``
    (+ ``multimask``) -> what ``grounded-sam segment`` finds, statelessly."""
    from starlette.concurrency import run_in_threadpool

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPError(
            415,
            "POST /api/segment takes a multipart form: image=@FILE and text=... or "
            f"points=[[x, y, label]] / boxes=[[x0, y0, x1, y1]]; got Content-Type {ctype or 'none'!r}",
        )
    try:
        form = await request.form()
    except Exception as e:  # noqa: BLE001 - the multipart parser's own errors
        raise HTTPError(400, f"malformed form: {e}") from None
    known = {"image", "text", "points", "boxes", "multimask"}
    unknown = sorted(set(form.keys()) - known)
    if unknown:
        raise HTTPError(422, f"unknown form field(s) {unknown}; known: {sorted(known)}")
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise HTTPError(422, "image: missing file (send it as image=@photo.jpg)")
    data = await upload.read()
    text = form.get("text")
    points_raw, boxes_raw = form.get("points"), form.get("boxes")
    multimask = _form_bool(form.get("multimask"), "multimask")
    kwargs: dict[str, Any] = {}
    if text is not None and (points_raw is not None or boxes_raw is not None):
        raise HTTPError(422, "give text, or points and/or boxes, not both")
    if text is None and points_raw is None and boxes_raw is None:
        raise HTTPError(422, "nothing to segment: give text, points or boxes")
    if points_raw is not None:
        points = _form_json(points_raw, "points", "[[120, 80, 1]]")
        if not isinstance(points, list) or not points:
            raise HTTPError(422, "points must be a non-empty list of [x, y] or [x, y, label]")
        from grounded_sam.app.service import _point_rows

        rows = _point_rows(points)
        kwargs["points"] = rows[:, :2]
        kwargs["point_labels"] = rows[:, 2]
    if boxes_raw is not None:
        boxes = _form_json(boxes_raw, "boxes", "[[10, 20, 200, 180]]")
        if not isinstance(boxes, list) or not boxes:
            raise HTTPError(422, "boxes must be a non-empty list of [x0, y0, x1, y1]")
        kwargs["boxes"] = boxes

    def run() -> dict:
        image = _load_upload(data)
        if text is not None:
            from grounded_sam.phrases import parse_phrases

            result = segmenter.segment(image, parse_phrases(text), multimask_output=multimask)
        else:
            result = segmenter.segment(image, None, multimask_output=multimask, **kwargs)
        anns = result_annotations(result)
        if text is None:
            for a in anns:  # point/box prompts name nothing ("point"/"box" in result.json)
                a["label"] = None
        h, w = result.image_size
        return {"width": w, "height": h, "annotations": anns}

    return await run_in_threadpool(run)


def _load_upload(data: bytes):
    """Uploaded bytes -> (H, W, 3) uint8 RGB through :func:`grounded_sam.load_image` on a file,
    the very function ``grounded-sam segment`` reads its images with (EXIF rotation included)."""
    import os
    import tempfile

    from grounded_sam.io import load_image

    fd, tmp = tempfile.mkstemp(prefix="grounded-sam-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return load_image(tmp)
        except InputError as e:  # name the form field, not our temporary file
            raise InputError(str(e).replace(repr(tmp), "image").replace(tmp, "image")) from None
    finally:
        os.unlink(tmp)


# ------------------------------------------------------------------------- running
def tcp_socket(family: int):
    """A TCP socket for the server to listen on, with ``SO_REUSEADDR`` and ``TCP_NODELAY``.

    The protocol must be named: asyncio turns Nagle's algorithm off only on sockets whose
    ``proto`` is ``IPPROTO_TCP``, and uvicorn writes a response's headers and body in two
    sends, so with Nagle on every request after the first on a kept-alive connection waited
    for the client's delayed ACK (measured 44 ms per request on loopback, 1 ms after).
    Accepted connections inherit both the ``proto`` and the option."""
    import socket

    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def serve(app, sock, *, log_level: str = "warning", on_start=None, server_box=None) -> None:
    """Run ``app`` with uvicorn on a bound, listening socket until Ctrl-C / SIGTERM (in the
    main thread) or ``server.should_exit`` (``server_box``, a list, receives the
    ``uvicorn.Server`` so a caller in another thread can stop it). ``on_start()`` is called
    once requests are accepted. In-flight requests finish before it returns."""
    uvicorn = require(
        "uvicorn", feature="grounded-sam app", install='pip install "grounded-sam[app]"'
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # uvicorn's own handler re-raises the signal after its graceful shutdown, which
            # would kill the process before the CLI closes the models and says it stopped;
            # Ctrl-C / SIGTERM are this server's normal way to end
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for open requests
            self.should_exit = True

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
    server = Server(config)
    if server_box is not None:
        server_box.append(server)
    if on_start is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            if server.started:
                on_start()

        server.startup = startup
    server.run(sockets=[sock])


class BackgroundServer:
    """The app served from a thread of this process: for tests, benchmarks and notebooks.

    ``with BackgroundServer(app) as srv: httpx.get(srv.url + "api/info")``; leaving the block
    stops the server (in-flight requests finish first).

    Args:
        app: the ASGI app from :func:`create_app`.
        host: address to bind (default loopback).
        port: port (default 0: a free one).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket
        import threading

        self._sock = tcp_socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self.host = host
        self.port = self._sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._box: list = []
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(app,), daemon=True)

    def _run(self, app) -> None:
        try:
            serve(app, self._sock, on_start=self._started.set, server_box=self._box)
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._started.set()

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the app server did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._box:
            self._box[0].should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
