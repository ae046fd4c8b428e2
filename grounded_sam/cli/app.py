"""``grounded-sam app DATASET [--images DIR...] [--classes ONTOLOGY] [SAM and detector flags]
[--host 127.0.0.1] [--port 7860] [--token T]``: the annotation app in the browser.

Opens a dataset that ``grounded-sam label`` wrote (or creates one from ``--images`` and
``--classes``), serves the page and its JSON API, and prints the URL. Every change is saved
to ``DATASET/annotations.json`` before it is acknowledged; Ctrl-C stops the server. See
``docs/app.md``.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import socket
import sys

from grounded_sam.cli._common import (
    UsageError,
    add_debug_arg,
    add_detector_args,
    add_sam_args,
    detector_kwargs,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``app`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "app",
        help="annotate in the browser: live SAM clicks, text prompts, the review queue",
        description=(
            "Serve a web page to correct and extend a dataset: click for SAM masks (the image "
            "is encoded once, each click runs the decoder only), type text prompts for the "
            "detector, accept / reject / relabel / delete instances, work through label's "
            "review queue. Saves DATASET/annotations.json (COCO, RLE) on every change."
        ),
    )
    add_debug_arg(parser)
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder (created if new)")
    parser.add_argument(
        "--images",
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="image folders (or files): where the dataset's images are, and those not "
        "labelled yet; several folders name their files FOLDER/... as label does",
    )
    parser.add_argument(
        "--classes",
        default=None,
        metavar="ONTOLOGY",
        help="a YAML ontology or inline 'cat,dog': needed to create a dataset; on an existing "
        "one it may append classes",
    )
    add_sam_args(parser)
    add_detector_args(parser)
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only); any other address "
        "prints a warning and requires a token",
    )
    server.add_argument(
        "--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)"
    )
    server.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="require this token on every API request (generated when --host is not local)",
    )
    server.add_argument(
        "--max-body-mb",
        type=float,
        default=20.0,
        metavar="MB",
        help="largest request body (default 20 MB); larger ones get HTTP 413",
    )
    server.add_argument(
        "--cache-size",
        type=int,
        default=16,
        metavar="N",
        help="image embeddings kept in memory (default 16; about 4 MB each for SAM 1)",
    )
    server.add_argument(
        "--no-prefetch",
        action="store_true",
        help="do not encode the next images in the background",
    )
    server.add_argument(
        "--no-disk-cache",
        action="store_true",
        help="do not store image embeddings in DATASET/embeddings (shared with label/finetune)",
    )
    parser.set_defaults(func=run)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    from pathlib import Path

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise UsageError(f"--max-body-mb must be positive, got {args.max_body_mb:g}")
    if args.cache_size < 1:
        raise UsageError(f"--cache-size must be at least 1, got {args.cache_size}")
    if args.sam_checkpoint is not None and not Path(args.sam_checkpoint).is_file():
        raise UsageError(f"--sam-checkpoint {args.sam_checkpoint!r}: no such file")
    if args.token is not None and not args.token.strip():
        raise UsageError("--token must not be empty")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, so a taken port is one clear error before any model loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r}: cannot resolve it ({e})") from None
    family, _, _, _, addr = infos[0]
    from grounded_sam.app.server import tcp_socket

    sock = tcp_socket(family)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
            "(0 picks a free one)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int, token: str | None) -> str:
    shown = host
    if host in ("0.0.0.0", "::", ""):
        shown = socket.gethostname()
    elif ":" in host:
        shown = f"[{host}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def run(args: argparse.Namespace) -> int:
    """Open the dataset, load the models, serve until Ctrl-C."""
    from grounded_sam.app.security import is_loopback

    _check_args(args)
    loopback = is_loopback(args.host)
    token = args.token
    if not loopback:
        if token is None:
            token = secrets.token_urlsafe(16)
        sys.stderr.write(
            f"warning: --host {args.host} makes the app reachable from other machines; anyone "
            "with the URL and token can read the images and change the dataset (the traffic "
            "is not encrypted: use an SSH tunnel or a TLS proxy on untrusted networks)\n"
        )
    kw = detector_kwargs(args)
    from grounded_sam.errors import require

    require("fastapi", feature="grounded-sam app", install='pip install "grounded-sam[app]"')
    require("uvicorn", feature="grounded-sam app", install='pip install "grounded-sam[app]"')
    sock = _bind(args.host, args.port)  # first: a taken port changes nothing on disk
    try:
        return _serve(args, sock, token, loopback, kw)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, sock: socket.socket, token, loopback: bool, kw) -> int:
    import threading

    from grounded_sam.app.server import create_app, serve
    from grounded_sam.app.service import Segmenter
    from grounded_sam.app.store import DatasetStore
    from grounded_sam.pipeline import GroundedSAM

    store = DatasetStore.open(args.dataset, args.images, args.classes)
    port = sock.getsockname()[1]
    pipe = GroundedSAM(
        args.detector,
        args.sam,
        sam_checkpoint=args.sam_checkpoint,
        device=args.device,
        precision=args.precision,
        cache_size=args.cache_size,
        **kw,
    )
    disk = None
    if not args.no_disk_cache:
        from grounded_sam.engine.embeddings import EmbeddingStore, sam_identity

        # the identity label uses, so `label --save-embeddings` and the app share the files
        disk = EmbeddingStore(
            store.root, sam_identity(args.sam, args.sam_checkpoint, args.precision)
        )
    segmenter = Segmenter(pipe, store=disk, prefetch=not args.no_prefetch)
    _log_to_stderr()
    # the detector loads in the background: clicks work at once, and a detector that cannot
    # load (e.g. no weights offline) turns text prompts off with its message instead of
    # stopping the app
    threading.Thread(target=segmenter.load_detector, name="detector-loader", daemon=True).start()
    segmenter.start()
    allowed = {"127.0.0.1", "localhost", "::1", args.host.lower()} if loopback else None
    app = create_app(
        store,
        segmenter,
        token=token,
        max_body=int(args.max_body_mb * 1024 * 1024),
        allowed_hosts=allowed,
    )
    counts = store.counts()

    def started() -> None:
        print(
            f"grounded-sam app: {store.root} ({counts['images']} images: {counts['review']} to "
            f"review, {counts['todo']} not labelled, {counts['labelled']} labelled)",
            flush=True,
        )
        print(f"open {_url(args.host, port, token)}  (Ctrl-C to stop)", flush=True)

    try:
        serve(app, sock, on_start=started)
    finally:
        segmenter.close()
    print(f"stopped; every change is saved in {store.root / 'annotations.json'}", flush=True)
    return 0


def _log_to_stderr() -> None:
    """The app's own log lines (detector failures, skipped prefetches) on stderr."""
    logger = logging.getLogger("grounded_sam.app")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
