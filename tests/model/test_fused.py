"""The fused CPU fast paths (``grounded_sam.model._fused``) and TinyViT's striped MBConv blocks
compute what the plain PyTorch formulation computes, and fall back to it where they must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.model import _fused, tiny_vit
from grounded_sam.model._fused import conv2d_add, conv2d_gelu, linear_add, linear_gelu
from grounded_sam.model.tiny_vit import tiny_vit_5m


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _layers(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 1).to(dtype)
    depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8).to(dtype)
    fc1, fc2 = nn.Linear(8, 32).to(dtype), nn.Linear(32, 8).to(dtype)
    for m in (conv, depthwise, fc1, fc2):
        for p in m.parameters():
            p.data.normal_(0, 0.5)
    return conv, depthwise, fc1, fc2


def _cases(dtype: torch.dtype):
    conv, depthwise, fc1, fc2 = _layers(dtype)
    x = _rand(2, 8, 9, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)
    other = _rand(2, 16, 9, 7, seed=1, dtype=dtype)
    tokens, residual = _rand(2, 5, 8, seed=2, dtype=dtype), _rand(2, 5, 8, seed=3, dtype=dtype)
    return [
        ("conv2d_gelu", lambda: conv2d_gelu(conv, x), lambda: F.gelu(conv(x))),
        ("depthwise_gelu", lambda: conv2d_gelu(depthwise, x), lambda: F.gelu(depthwise(x))),
        ("conv2d_add", lambda: conv2d_add(conv, x, other), lambda: conv(x) + other),
        ("linear_gelu", lambda: linear_gelu(fc1, tokens), lambda: F.gelu(fc1(tokens))),
        (
            "linear_add",
            lambda: linear_add(fc2, linear_gelu(fc1, tokens), residual),
            lambda: fc2(F.gelu(fc1(tokens))) + residual,
        ),
    ]


@pytest.fixture(params=["fused", "plain"])
def fusion(request, monkeypatch):
    """Run a test once with the fused operators (where this PyTorch has them) and once without."""
    _fused.fusion_available.cache_clear()
    if request.param == "plain":
        monkeypatch.setenv(_fused.DISABLE_ENV, "1")
    elif not _fused.fusion_available():
        pytest.skip("this PyTorch build has no usable oneDNN fused operators")
    yield request.param
    _fused.fusion_available.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_helpers_equal_the_plain_ops(fusion, dtype):
    probe, weight = _rand(1, 4, dtype=dtype), _rand(4, 4, dtype=dtype)
    with torch.inference_mode():
        assert _fused._fast(probe, weight) is (fusion == "fused" and dtype == torch.float32)
    for name, got, want in _cases(dtype):
        with torch.inference_mode():
            expected = want()
            inputs_before = [t.clone() for t in _cases_inputs(got)]
            result = got()
            inputs_after = _cases_inputs(got)
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5, msg=name)
        for before, after in zip(inputs_before, inputs_after, strict=True):
            assert torch.equal(before, after), f"{name} modified an input in place"


def _cases_inputs(fn) -> list[torch.Tensor]:
    """The tensors a case's closure reads (its free variables), to check none is modified."""
    cells = fn.__closure__ or ()
    return [c.cell_contents for c in cells if isinstance(c.cell_contents, torch.Tensor)]


def test_disable_env_turns_fusion_off(monkeypatch):
    _fused.fusion_available.cache_clear()
    monkeypatch.setenv(_fused.DISABLE_ENV, "1")
    try:
        assert _fused.fusion_available() is False
    finally:
        _fused.fusion_available.cache_clear()


def test_helpers_keep_autograd_working(fusion):
    """With autograd on, the helpers take the plain out-of-place path and gradients flow."""
    conv, _, fc1, fc2 = _layers()
    x = _rand(1, 8, 5, 5).requires_grad_()
    tokens = _rand(3, 8, seed=1).requires_grad_()
    out = conv2d_add(conv, x, conv2d_gelu(conv, x)).sum()
    out = out + linear_add(fc2, linear_gelu(fc1, tokens), tokens).sum()
    out.backward()
    assert x.grad is not None and tokens.grad is not None
    assert all(p.grad is not None for m in (conv, fc1, fc2) for p in m.parameters())


def _small_tiny_vit(dtype: torch.dtype) -> nn.Module:
    model = tiny_vit_5m(img_size=128, num_classes=0, drop_path_rate=0.0).to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.1)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval().fuse()


@pytest.mark.parametrize("batch", [1, 2])
def test_striped_mbconv_equals_whole_map(monkeypatch, fusion, batch):
    """Stripes of a few rows (with their halos) give the whole-map result, input untouched."""
    model = _small_tiny_vit(torch.float32)
    block = model.layers[0].blocks[0]
    x = _rand(batch, 64, 31, 32).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    with torch.inference_mode():
        whole = block._forward_rows(x)
        # 4 rows per stripe: 31 rows give 7 full stripes and a 3-row one.
        hidden = block.conv1.c.out_channels
        monkeypatch.setattr(tiny_vit, "_STRIPE_BYTES", (4 + 2) * batch * 32 * hidden * 4)
        striped = block(x)
    assert torch.equal(x, before)
    assert striped.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(striped, whole, rtol=1e-6, atol=1e-6)


def test_tiny_vit_inference_path_equals_autograd_path(fusion):
    """The whole encoder with fused ops, stripes and in-place activations (inference) equals
    its plain autograd-enabled forward, and leaves its input alone."""
    model = _small_tiny_vit(torch.float32)
    x = _rand(2, 3, 128, 128)
    before = x.clone()
    with torch.inference_mode():
        fast = model(x)
    plain = model(x).detach()
    assert torch.equal(x, before)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_tracing_sees_standard_ops_only():
    """torch.export of the inference path records no private mkldnn operators."""

    class ConvGelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = _layers()[0]

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return conv2d_gelu(self.conv, t)

    module = ConvGelu().eval()
    x = _rand(1, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exported = torch.export.export(module, (x,))
        graph = str(exported.graph)
        torch.testing.assert_close(exported.module()(x), F.gelu(module.conv(x)))
    assert "mkldnn" not in graph and "gelu" in graph
