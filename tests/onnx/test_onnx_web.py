"""The decoders in onnxruntime-web (the runtime of Meta's web demo and CVAT's SAM plugin),
under Node.js with its WebAssembly backend: the same outputs as onnxruntime in Python.

Needs ``node`` and the npm package ``onnxruntime-web`` (``npm install onnxruntime-web`` in a
folder; point ``GROUNDED_SAM_ORT_WEB`` at its ``node_modules``); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from grounded_sam.onnx import OnnxSamPredictor, decoder_prompt
from grounded_sam.onnx.files import preprocessed_size
from grounded_sam.onnx.verify import agreement, rel_diff

NODE_MODULES = os.environ.get("GROUNDED_SAM_ORT_WEB")

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None
    or not NODE_MODULES
    or not (Path(NODE_MODULES) / "onnxruntime-web").is_dir(),
    reason="needs node and GROUNDED_SAM_ORT_WEB=<node_modules with onnxruntime-web>",
)

DECODE_JS = r"""
const ort = require('onnxruntime-web');
const fs = require('fs');
const [model, feedJson, outDir] = process.argv.slice(2);
ort.env.wasm.numThreads = 1;
(async () => {
  const feed = JSON.parse(fs.readFileSync(feedJson));
  const inputs = {};
  for (const [k, v] of Object.entries(feed)) {
    const buf = fs.readFileSync(v.file);
    const data = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
    inputs[k] = new ort.Tensor('float32', data, v.dims);
  }
  const bytes = new Uint8Array(fs.readFileSync(model));
  const session = await ort.InferenceSession.create(bytes, {executionProviders: ['wasm']});
  const out = await session.run(inputs);
  const dims = {};
  for (const [k, t] of Object.entries(out)) {
    fs.writeFileSync(`${outDir}/${k}.bin`,
                     Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    dims[k] = t.dims;
  }
  fs.writeFileSync(`${outDir}/dims.json`, JSON.stringify(dims));
})().catch((e) => { console.error(String(e)); process.exit(3); });
"""


def _run_web(decoder: Path, feed: dict, tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    spec = {}
    for name, value in feed.items():
        path = tmp / f"{name}.bin"
        np.ascontiguousarray(value, np.float32).tofile(path)
        spec[name] = {"dims": list(np.shape(value)), "file": str(path)}
    (tmp / "feed.json").write_text(json.dumps(spec))
    (tmp / "decode.js").write_text(DECODE_JS)
    env = dict(os.environ, NODE_PATH=NODE_MODULES)
    args = ["node", str(tmp / "decode.js"), str(decoder), str(tmp / "feed.json"), str(tmp)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dims = json.loads((tmp / "dims.json").read_text())
    return {k: np.fromfile(tmp / f"{k}.bin", np.float32).reshape(d) for k, d in dims.items()}


@pytest.mark.parametrize(
    ("name", "options"), [("tiny_vit", {}), ("sam2", {}), ("tiny_vit", {"quantize": True})]
)
def test_decoder_in_onnxruntime_web(name, options, exported, photos, tmp_path):
    p = OnnxSamPredictor(exported(name, **options).directory)
    p.set_image(photos("chelsea"))
    for size in [(600, 400), (300, 451)]:
        input_size = preprocessed_size(*size, p.model.metadata)
        points = p.model.transform_coords(np.array([[200.0, 300.0], [90, 100]]), size, input_size)
        box = p.model.transform_coords(np.array([[50.0, 80], [350, 500]]), size, input_size)
        pc, pl = decoder_prompt(p.model.family, points, np.array([1, 0]), box.reshape(4))
        feed = {
            "image_embeddings": p.get_image_embedding().numpy(),
            "point_coords": pc,
            "point_labels": pl,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(size, np.float32),
        }
        high_res = p.get_embedding().high_res
        for k, t in zip(
            ("high_res_feats_0", "high_res_feats_1")[: len(high_res)], high_res, strict=True
        ):
            feed[k] = t.numpy()
        names = ["masks", "iou_predictions", "low_res_masks"]
        ref = dict(zip(names, p.model.decoder.run(names, feed), strict=True))
        web = _run_web(p.model.directory / "decoder.onnx", feed, tmp_path / f"{size[0]}")
        for k in names:
            assert web[k].shape == ref[k].shape, k
            if options.get("quantize"):  # the two runtimes' int8 kernels round differently
                assert agreement(ref[k], web[k]) >= 0.99, (k, size)
            else:
                assert rel_diff(ref[k], web[k]) < 1e-4, (k, size)
