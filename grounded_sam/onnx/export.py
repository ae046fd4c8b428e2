"""``export_onnx``: a SAM variant -> ``encoder.onnx`` + ``decoder.onnx`` + ``sam_onnx.json``.

from grounded_sam.onnx import export_onnx

export_onnx("mobile_sam", "exports/mobile_sam")                 # registry weights
export_onnx("vit_b", "exports/vit_b", checkpoint="sam_vit_b_01ec64.pth", quantize=True)

What is written, and the decoder's inputs and outputs (Meta's), are in :mod:`grounded_sam.onnx.graphs`
and ``docs/onnx.md``. The export traces with PyTorch's TorchScript-based ONNX exporter, which
writes opsets 14 to 20 (opset 17 by default, as Meta's ``export_onnx_model.py``, for the widest
range of runtimes, onnxruntime-web included), then

1. checks that both graphs hold standard ONNX operators only (no ``com.microsoft`` or other
   private domains: :func:`check_standard_ops`);
2. unless ``verify=False``, runs them in onnxruntime against the PyTorch model on a test scene
   (:func:`grounded_sam.onnx.verify.compare`; a single-mask decoder against PyTorch's output
   with the same single-mask rule) and refuses files that disagree;
3. with ``quantize=True``, converts both to dynamic int8 weights with onnxruntime's quantiser
   and measures the masks' IoU against the fp32 files (:func:`grounded_sam.onnx.verify.mask_iou`);
4. writes the metadata, every file through a temporary name renamed into place.

On any failure or interrupt nothing of the export stays: the temporary folder is removed, and
so is the output folder when this call created it (a folder that existed is kept, with
whatever else it holds).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounded_sam.errors import InputError
from grounded_sam.onnx import files, graphs, runtime, verify
from grounded_sam.onnx.predictor import OnnxSam

__all__ = [
    "OnnxExport",
    "export_onnx",
    "check_standard_ops",
    "MIN_OPSET",
    "MAX_OPSET",
    "DEFAULT_OPSET",
    "TOLERANCES",
]

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = files.MIN_OPSET, files.MAX_OPSET, files.DEFAULT_OPSET
# Export refuses files further than this from PyTorch (the test suite holds them to 1e-4 and
# 99.9%; these leave room for other CPUs' float rounding in deep encoders).
TOLERANCES = {"logits_rel_diff": 1e-3, "mask_agreement": 0.999, "end_to_end_agreement": 0.995}
_STANDARD_DOMAINS = ("", "ai.onnx")
# Files a previous export may have left that this one replaces or removes.
_OWNED = (
    files.ENCODER_FILE,
    files.ENCODER_FILE + ".data",
    files.DECODER_FILE,
    files.DECODER_FILE + ".data",
    files.METADATA_FILE,
)
_PROTOBUF_LIMIT = 2**31 - 2**20  # save weights beside the graph above ~2 GB


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        directory: the output folder.
        encoder, decoder: paths of ``encoder.onnx`` and ``decoder.onnx``.
        metadata: the contents of ``sam_onnx.json`` (variant, family, preprocessing, I/O
            names, opset, quantisation, the verification figures).
    """

    directory: Path
    encoder: Path
    decoder: Path
    metadata: dict[str, Any]


def check_standard_ops(path: str | os.PathLike) -> set[tuple[str, str]]:
    """The (domain, op_type) pairs of an ONNX file's graph; raises ``RuntimeError`` if one is
    outside the standard ONNX domain (an export bug: a private or fused operator leaked in)."""
    onnx = runtime.onnx()
    model = onnx.load(str(path), load_external_data=False)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    foreign = sorted(op for op in ops if op[0] not in _STANDARD_DOMAINS)
    imports = sorted(o.domain for o in model.opset_import if o.domain not in _STANDARD_DOMAINS)
    if foreign or imports or model.functions:
        raise RuntimeError(
            f"{path} holds non-standard operators {foreign} (opset imports {imports}, "
            f"{len(model.functions)} local functions): the export captured a private op"
        )
    return ops


def _log_default(message: str) -> None:  # pragma: no cover - replaced in the CLI
    pass


def _resolve_model(sam, checkpoint) -> torch.nn.Module:
    if isinstance(sam, str):
        from grounded_sam.model.build import build_sam

        return build_sam(sam, checkpoint=checkpoint, device="cpu")
    if checkpoint is not None:
        raise InputError("checkpoint only applies when sam is a variant name")
    if (
        not isinstance(sam, torch.nn.Module)
        or getattr(sam, "family", None) not in graphs.ENCODER_IO
    ):
        raise InputError(
            f"sam must be a variant name or a SAM model from build_sam, got {type(sam).__name__}"
        )
    return sam


def _check_model(model: torch.nn.Module) -> None:
    precision = getattr(model, "precision", "fp32")
    if precision != "fp32":
        raise InputError(
            f"this model runs in precision {precision!r}; export a float32 model (build_sam "
            "with the default precision) and use --quantize for an int8 file"
        )
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise InputError(
            f"export a model on the CPU (it is on {sorted(devices)}): call model.cpu() first"
        )
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise InputError("export a float32 model: call model.float() first")


def _is_float(value) -> bool:
    try:
        return value.type().scalarType() in ("Float", "Double", "Half", "BFloat16")
    except RuntimeError:  # no type recorded
        return False


def _floordiv_symbolic(g, a, b):
    """Python's floor division in ONNX: ``Floor(a / b)`` for floats; for integers the
    truncated quotient minus one where the signs differ and the remainder is non-zero."""
    if _is_float(a) or _is_float(b):
        return g.op("Floor", g.op("Div", a, b))
    q = g.op("Div", a, b)
    zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int64))
    rem = g.op("Sub", a, g.op("Mul", q, b))
    signs_differ = g.op("Xor", g.op("Less", a, zero), g.op("Less", b, zero))
    fix = g.op("And", signs_differ, g.op("Not", g.op("Equal", rem, zero)))
    return g.op("Sub", q, g.op("Cast", fix, to_i=7))  # 7: INT64


@contextlib.contextmanager
def _python_floordiv(opset: int) -> Iterator[None]:
    """Export ``//`` with Python's floor semantics while tracing.

    The TorchScript exporter maps ``aten::floordiv`` (``//`` on traced sizes) to a truncating
    division (documented there as deprecated behaviour), which is wrong for negative
    operands: Hiera's ``-(-h // w) * w`` (round up to a whole number of windows) became a
    round-down, cropping the grid instead of padding it. The override is registered for this
    export's opset only and removed afterwards.
    """
    names = ("aten::floordiv", "aten::floor_divide")
    for name in names:
        torch.onnx.register_custom_op_symbolic(name, _floordiv_symbolic, opset)
    try:
        yield
    finally:
        for name in names:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


# The TorchScript-based exporter: PyTorch >= 2.5 defaults to its torch.export-based one (which
# writes opset 18 and up only, and took 5x longer on the decoder); older releases have no
# ``dynamo`` argument and only this exporter.
_TORCHSCRIPT = (
    {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
)


def _trace(module, args, path: Path, opset: int, inputs, outputs, dynamic_axes, model) -> None:
    """Trace ``module`` to ``path`` with the TorchScript exporter, in the model's plain mode."""
    with graphs.plain_mode(model), _python_floordiv(opset), warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice, and tracer notes about Python values
        # our graph modules deliberately fix (the constant image size, the batch of one)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            **_TORCHSCRIPT,
            opset_version=opset,
            do_constant_folding=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
        )


def _single_file(path: Path) -> None:
    """Merge the per-tensor files the exporter writes for >2 GB models into one
    ``<name>.data`` beside the graph (what other tools expect), or do nothing."""
    folder = path.parent
    extra = [p for p in folder.iterdir() if p != path and not p.name.endswith(".onnx")]
    if not extra:
        return
    onnx = runtime.onnx()
    model = onnx.load(str(path), load_external_data=True)
    for p in extra:
        p.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def _export_files(
    model, folder: Path, opset: int, single_mask: bool, encoder_preprocess: bool, log
) -> None:
    family = model.family
    image = verify.verification_image()
    with torch.no_grad():
        x, _ = model.prepare_image(image)
        emb, high_res = model.encode(x)
    enc_in, enc_out = graphs.ENCODER_IO[family]
    dec_in, dec_out = graphs.DECODER_IO[family]
    log(f"exporting the image encoder of {model.name} (opset {opset})")
    enc_dir = folder / "encoder"
    enc_dir.mkdir()
    enc_example, enc_dynamic = x, None
    if encoder_preprocess:  # the resized (h, w, 3) image in 0..255, any h, w up to the side
        enc_example = torch.from_numpy(model.transform.apply_image(image).astype(np.float32))
        enc_dynamic = {enc_in[0]: {0: "image_height", 1: "image_width"}}
    _trace(graphs.encoder_graph(model, encoder_preprocess), (enc_example,),
           enc_dir / files.ENCODER_FILE, opset, enc_in, enc_out, enc_dynamic, model)  # fmt: skip
    _single_file(enc_dir / files.ENCODER_FILE)
    log("exporting the prompt encoder and mask decoder")
    example = [
        emb.contiguous(),
        *(t.contiguous() for t in high_res),
        torch.tensor([[[300.0, 200.0], [600.0, 700.0], [500.0, 450.0]]]),
        torch.tensor([[2.0, 3.0, 1.0]]),
        torch.zeros(1, 1, *model.prompt_encoder.mask_input_size),
        torch.tensor([1.0]),
        torch.tensor([float(image.shape[0]), float(image.shape[1])]),
    ]
    dynamic = {
        "point_coords": {1: "num_points"},
        "point_labels": {1: "num_points"},
        "masks": {2: "height", 3: "width"},
    }
    dec_dir = folder / "decoder"
    dec_dir.mkdir()
    _trace(graphs.decoder_graph(model, single_mask), tuple(example),
           dec_dir / files.DECODER_FILE, opset, dec_in, dec_out, dynamic, model)  # fmt: skip
    _declare_decoder_shapes(dec_dir / files.DECODER_FILE, 1 if single_mask else 4, model)
    for sub in (enc_dir, dec_dir):
        for p in sub.iterdir():
            os.replace(p, folder / p.name)
        sub.rmdir()


def _declare_decoder_shapes(path: Path, masks: int, model) -> None:
    """Write the decoder outputs' shapes into the file: (1, C, "height", "width"), (1, C),
    (1, C, 256, 256). The exporter leaves dimensions it cannot infer through the final resize
    as generated names; consumers that size buffers from the model's outputs want numbers."""
    onnx = runtime.onnx()
    proto = onnx.load(str(path))
    low = list(model.prompt_encoder.mask_input_size)
    shapes = {
        "masks": [1, masks, "height", "width"],
        "iou_predictions": [1, masks],
        "low_res_masks": [1, masks, *low],
    }
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        for d, value in zip(dims, shapes[out.name], strict=True):
            if isinstance(value, int):
                d.dim_value = value
            else:
                d.dim_param = value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def _metadata(
    model, opset: int, single_mask: bool, encoder_preprocess: bool, checkpoint
) -> dict[str, Any]:
    import onnxruntime

    import grounded_sam

    family = model.family
    dec = model.mask_decoder
    stability = None
    if family == "sam2" and getattr(dec, "dynamic_multimask_via_stability", False):
        stability = {
            "delta": float(dec.dynamic_multimask_stability_delta),
            "thresh": float(dec.dynamic_multimask_stability_thresh),
        }
    divide_by = 255.0 if family == "sam2" else 1.0
    return {
        "format": files.FORMAT,
        "format_version": files.FORMAT_VERSION,
        "model": model.name,
        "family": family,
        "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "image_size": int(model.img_size),
        "mask_input_size": list(model.prompt_encoder.mask_input_size),
        "mask_threshold": float(model.mask_threshold),
        "preprocess": {
            "resize": "square" if family == "sam2" else "longest_side",
            "divide_by": divide_by,
            "pixel_mean": _shortest(model.pixel_mean),
            "pixel_std": _shortest(model.pixel_std),
            "pad": "none" if family == "sam2" else "bottom_right_zeros",
            "channels": "RGB",
        },
        "encoder": {
            "file": files.ENCODER_FILE,
            "inputs": graphs.ENCODER_IO[family][0],
            "outputs": graphs.ENCODER_IO[family][1],
            # "nchw": (1, 3, S, S) normalised, padded; "hwc": the resized (h, w, 3) image in
            # 0..255, normalised and padded inside the graph
            "input_layout": "hwc" if encoder_preprocess else "nchw",
        },
        "decoder": {
            "file": files.DECODER_FILE,
            "inputs": graphs.DECODER_IO[family][0],
            "outputs": graphs.DECODER_IO[family][1],
            "masks": 1 if single_mask else 4,
            "single_mask": bool(single_mask),
        },
        "single_mask_stability": stability,
        "opset": opset,
        "quantized": False,
        "exported_with": {
            "grounded_sam": grounded_sam.__version__,
            "torch": torch.__version__,
            "onnx": runtime.onnx().__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def _shortest(t: torch.Tensor) -> list[float]:
    """float32 values as the shortest decimals that read back to them (123.675, not
    123.67500305175781)."""
    return [float(str(np.float32(v))) for v in t.flatten().tolist()]


class _QuantizerNotes(logging.Filter):
    """Drops onnxruntime's quantiser notes that say nothing about the result: its advice to
    run its pre-processing first, and one line (with a whole tensor type) per integer tensor
    it leaves alone, as it must (index and shape computations)."""

    NOTES = ("Please consider to run pre-processing", "Inference failed or unsupported type")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTES)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantiser logs through the root logger: filter it there while it runs only."""
    root, notes = logging.getLogger(), _QuantizerNotes()
    root.addFilter(notes)
    try:
        yield
    finally:
        root.removeFilter(notes)


def _quantize(folder: Path, qfolder: Path, log) -> None:
    """Dynamic int8 weights (onnxruntime's ``quantize_dynamic``, unsigned 8-bit, per tensor,
    as Meta's export script does) of both files, written into ``qfolder``."""
    runtime.onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in (files.ENCODER_FILE, files.DECODER_FILE):
        log(f"quantising {name} (dynamic int8)")
        src = folder / name
        external = (folder / (name + ".data")).exists()
        with warnings.catch_warnings(), _quiet_quantizer():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                src,
                qfolder / name,
                per_channel=False,
                reduce_range=False,
                weight_type=QuantType.QUInt8,
                use_external_data_format=external,
            )
        if (qfolder / name).stat().st_size > _PROTOBUF_LIMIT or external:
            _single_file_from(qfolder / name)


def _single_file_from(path: Path) -> None:
    """After quantisation: keep weights in ``<name>.data`` only when the graph needs it."""
    onnx = runtime.onnx()
    model = onnx.load(str(path), load_external_data=True)
    for p in path.parent.iterdir():
        if p != path and p.name.startswith(path.name):
            p.unlink()
    size = model.ByteSize()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=size > _PROTOBUF_LIMIT,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def export_onnx(
    sam: str | torch.nn.Module,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: bool = False,
    single_mask: bool = False,
    encoder_preprocess: bool = False,
    verify_outputs: bool = True,
    log: Callable[[str], None] | None = None,
) -> OnnxExport:
    """Export a SAM variant to ``out/encoder.onnx``, ``out/decoder.onnx`` and
    ``out/sam_onnx.json``.

    Args:
        sam: a variant name (:func:`grounded_sam.list_models`) or a float32 CPU model from
            :func:`grounded_sam.build_sam`.
        out: output folder (created, and removed again if the export fails; our files in it
            are replaced, nothing else is touched).
        checkpoint: official-format checkpoint for a named ``sam``; ``None`` fetches the
            registry weights.
        opset: ONNX opset, 14 to 20 (default 17).
        quantize: write dynamic int8 weights (onnxruntime's quantiser) instead of float32;
            the metadata states the masks' IoU against the float32 files.
        single_mask: the decoder returns one mask (Meta's ``--return-single-mask``: SAM 1
            picks the single-mask token for more than one click and the best multimask output
            otherwise; SAM 2.1 its stability rule) instead of four. Such a folder is for
            tools that render one mask (Meta's web demo); ``OnnxSamPredictor`` needs the
            default four-mask export.
        encoder_preprocess: SAM 1 / MobileSAM: ``encoder.onnx`` takes the resized image,
            (h, w, 3) float32 RGB in 0..255 with its long side at most 1024, and normalises
            and pads it itself (samexporter's ``--use-preprocess`` layout, which
            X-AnyLabeling's SAM loader feeds) instead of the (1, 3, 1024, 1024) tensor.
        verify_outputs: compare the files with the PyTorch model in onnxruntime and refuse
            them beyond :data:`TOLERANCES` (about as long as the export itself); a
            single-mask decoder is compared with PyTorch's output under the same rule.
        log: called with one line per step (the CLI prints them).

    Returns:
        :class:`OnnxExport`.

    Raises:
        InputError: unknown variant, bad opset, a model that is not float32 on the CPU, or an
            ``out`` that is a file.
        WeightsError: a checkpoint that is missing or not of this variant.
        MissingDependency: onnx / onnxruntime not installed.
        RuntimeError: the exported graphs hold a private operator or disagree with PyTorch
            (a bug; please report it).
    """
    log = log or _log_default
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out {str(out)!r} exists and is not a folder")
    runtime.onnx()
    runtime.onnxruntime()
    model = _resolve_model(sam, checkpoint)
    _check_model(model)
    if encoder_preprocess and model.family != "sam":
        raise InputError(
            f"encoder_preprocess is for SAM 1 / MobileSAM; {model.name!r} is a "
            f"{model.family!r} model, whose encoder takes the (1, 3, 1024, 1024) tensor"
        )
    t0 = time.perf_counter()
    created = _missing_folders(out)
    out.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out))
        meta = _export_verified(
            model, out, tmp, opset, quantize, single_mask, encoder_preprocess, verify_outputs,
            checkpoint, log, moved, t0,
        )  # fmt: skip
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if created:  # the folder is ours: nothing of this export stays behind
            for path in moved:
                with contextlib.suppress(OSError):
                    path.unlink()
            _remove_empty(created)
        renamed = _naming_out(e, tmp, out) if tmp is not None else None
        if renamed is not None:
            raise renamed from e
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out / files.ENCODER_FILE} and {out / files.DECODER_FILE}")
    return OnnxExport(out, out / files.ENCODER_FILE, out / files.DECODER_FILE, meta)


def _export_verified(
    model, out: Path, tmp: Path, opset, quantize, single_mask, encoder_preprocess,
    verify_outputs, checkpoint, log, moved: list[Path], t0: float,
) -> dict:  # fmt: skip
    """Export into ``tmp``, check, verify, quantise, then move the files into ``out``
    (appending each path moved to ``moved``); the metadata."""
    _export_files(model, tmp, opset, single_mask, encoder_preprocess, log)
    for name in (files.ENCODER_FILE, files.DECODER_FILE):
        check_standard_ops(tmp / name)
    meta = _metadata(model, opset, single_mask, encoder_preprocess, checkpoint)
    fp32 = None
    if verify_outputs or quantize:
        fp32 = OnnxSam.from_files(tmp / files.ENCODER_FILE, tmp / files.DECODER_FILE, meta)
    if verify_outputs:
        what = "the single-mask decoder" if single_mask else "the decoder"
        log(f"verifying the encoder and {what} against PyTorch in onnxruntime")
        figures = verify.compare(model, fp32)
        meta["verification"] = figures
        _check_figures(figures)
    final = tmp
    if quantize:
        qdir = tmp / "int8"
        qdir.mkdir()
        _quantize(tmp, qdir, log)
        qmeta = dict(meta, quantized=True)
        int8 = OnnxSam.from_files(qdir / files.ENCODER_FILE, qdir / files.DECODER_FILE, qmeta)
        log("measuring the int8 masks against float32")
        qmeta["quantization"] = {
            "method": "onnxruntime.quantization.quantize_dynamic, QUInt8 weights, per tensor",
            "mask_iou_vs_fp32": verify.mask_iou(fp32, int8),
        }
        meta, final = qmeta, qdir
        del int8
    del fp32
    meta["export_seconds"] = round(time.perf_counter() - t0, 1)
    (final / files.METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    produced = {p.name for p in final.iterdir() if p.is_file()}
    for name in _OWNED:  # a stale .data of an earlier, bigger export must not stay
        if name not in produced and (out / name).exists():
            (out / name).unlink()
    for name in sorted(produced - {files.METADATA_FILE}) + [files.METADATA_FILE]:
        os.replace(final / name, out / name)
        moved.append(out / name)
    return meta


def _missing_folders(out: Path) -> list[Path]:
    """The folders ``out.mkdir(parents=True)`` will create, deepest first."""
    missing = []
    path = Path(os.path.abspath(out))
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this export created (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else wrote there) or gone: leave the rest
            return


def _naming_out(error: BaseException, tmp: Path, out: Path) -> BaseException | None:
    """``error`` with the hidden temporary folder in its message replaced by ``out`` (the
    folder the user named), or None when its message does not name it."""
    if not isinstance(error, Exception) or len(error.args) != 1:
        return None
    message = error.args[0]
    if not isinstance(message, str) or str(tmp) not in message:
        return None
    message = message.replace(str(tmp / "int8"), str(out)).replace(str(tmp), str(out))
    try:
        return type(error)(message)
    except Exception:  # noqa: BLE001 - an exception class with another signature
        return None


def _check_figures(figures: dict) -> None:
    bad = []
    if not figures["logits_rel_diff"] <= TOLERANCES["logits_rel_diff"]:
        bad.append(f"logits differ by {figures['logits_rel_diff']:.2e} (relative)")
    for key in ("mask_agreement", "end_to_end_agreement"):
        if not figures[key] >= TOLERANCES[key]:
            bad.append(f"{key} {figures[key]:.5f} < {TOLERANCES[key]}")
    if bad:
        raise RuntimeError(
            "the exported files disagree with the PyTorch model: " + "; ".join(bad) + ". This "
            "is a bug: please report it (verify_outputs=False / --no-verify writes them anyway)"
        )
