"""Fused linear chains compute what the layers they replace compute, border included."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backend.inference import SuperResolver
from backend.model import COMPACT_STUDENT, PAPER_STUDENT, SlimDiffSRStudent
from backend.model.conv_fusion import LinearConvChain, fuse_linear_chains
from backend.model.fused_student import FusedStudent


def _conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


CHAINS = {
    "pair": lambda: [_conv(3, 8), _conv(8, 5)],
    "pair, second strided, no bias": lambda: [_conv(3, 8), _conv(8, 6, stride=2, bias=False)],
    "upsample then pair": lambda: [
        nn.Upsample(scale_factor=2.0, mode="nearest"),
        _conv(4, 8, bias=False),
        _conv(8, 3),
    ],
}


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("size", [(1, 1), (3, 2), (7, 9), (16, 16), (33, 20)])
def test_chain_equals_its_layers_at_every_pixel(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(len(name) + size[0])
    layers = CHAINS[name]()
    for m in layers:
        if isinstance(m, nn.Conv2d):  # offsets large enough that a wrong border would show
            nn.init.uniform_(m.weight, -0.5, 0.5)
            if m.bias is not None:
                nn.init.uniform_(m.bias, 1.0, 2.0)
    reference = nn.Sequential(*copy.deepcopy(layers))
    chain = LinearConvChain(layers)
    cin = next(m for m in layers if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(2, cin, *size)
    with torch.no_grad():
        want, got = reference(x), chain(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_chain_rejects_layers_it_cannot_fuse() -> None:
    with pytest.raises(ValueError, match="two 3x3"):
        LinearConvChain([_conv(3, 8)])
    with pytest.raises(ValueError, match="strided"):
        LinearConvChain([_conv(3, 8, stride=2), _conv(8, 8)])
    with pytest.raises(ValueError, match="two 3x3"):
        LinearConvChain([_conv(3, 8), nn.Conv2d(8, 8, 1)])


def test_fusion_finds_only_chains_without_activation() -> None:
    layers = nn.Sequential(_conv(3, 8), _conv(8, 8, stride=2), nn.ReLU(), _conv(8, 8), nn.ReLU(), _conv(8, 8))
    fused = fuse_linear_chains(layers)
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["LinearConvChain", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    # A lone upsample + conv stays as it is (measured slower as a phase convolution).
    lone = fuse_linear_chains(nn.Sequential(nn.Upsample(scale_factor=2.0), _conv(8, 8), nn.ReLU()))
    assert [type(m).__name__ for m in lone] == ["Upsample", "Conv2d", "ReLU"]


def test_compact_student_fuses_its_full_resolution_ends_and_the_paper_student_nothing() -> None:
    compact = FusedStudent(SlimDiffSRStudent(COMPACT_STUDENT))
    chains = [m for m in [*compact.encoder, *compact.decoder] if isinstance(m, LinearConvChain)]
    assert [c.upsample for c in chains] == [False, True]
    assert chains[0].stride == 2
    paper = FusedStudent(SlimDiffSRStudent(PAPER_STUDENT))
    assert not [m for m in paper.modules() if isinstance(m, LinearConvChain)]


@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_fused_student_equals_the_student(size: tuple[int, int]) -> None:
    torch.manual_seed(3)
    student = SlimDiffSRStudent(COMPACT_STUDENT).eval()
    for p in student.parameters():  # the compact init starts near bicubic; make it work
        p.data.add_(torch.randn_like(p) * 0.05)
    fused = FusedStudent(copy.deepcopy(student)).eval()
    x = torch.rand(1, 3, *size) * 2 - 1
    with torch.no_grad():
        z_want, want = student(x)
        z_got, got = fused(x)
    torch.testing.assert_close(z_got, z_want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (want - x).abs().max() > 0.05  # the network does something the check would see


def test_resolver_runs_the_fused_network_and_leaves_the_student_untouched() -> None:
    torch.manual_seed(4)
    student = SlimDiffSRStudent(COMPACT_STUDENT).eval()
    keys = set(student.state_dict())
    resolver = SuperResolver(student, 4, "cpu", "fp32")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(resolver.run_network(x), student(x)[1], rtol=1e-5, atol=1e-5)
    assert set(resolver.model.state_dict()) == keys
