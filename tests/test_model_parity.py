"""Numerical parity of the student with an independent, plain re-implementation.

The reference below is written directly from the release's forward pass as a flat
function over the state dict (torch.nn.functional only, explicit softmax attention, a
hand-made skip list), sharing no code with backend/model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backend.model import SlimDiffSRStudent, StudentConfig

KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "docs" / "release-checkpoint-keys.txt"


def _gn(sd, p, x, groups, eps):
    return F.group_norm(x, groups, sd[p + ".weight"], sd[p + ".bias"], eps)


def _fsc(sd, p, x):
    c = x.shape[1]
    low = F.conv2d(x, sd[p + ".low_branch.0.weight"], padding=1, groups=c)
    high = F.conv2d(x - low, sd[p + ".high_branch.0.weight"], padding=1, groups=c)
    g = x.mean(dim=(2, 3))
    g = torch.relu(g @ sd[p + ".mlp.0.weight"].T)
    w = torch.sigmoid(g @ sd[p + ".mlp.2.weight"].T + sd[p + ".mlp.2.bias"])
    fused = w[:, 0, None, None, None] * low + w[:, 1, None, None, None] * high
    h = torch.relu(F.conv2d(fused, sd[p + ".bottleneck.0.weight"]))
    return F.conv2d(h, sd[p + ".bottleneck.2.weight"])


def _dsc(sd, p, x):
    c = x.shape[1]
    hw, vw = sd[p + ".h_conv.0.weight"], sd[p + ".v_conv.0.weight"]
    fh = F.conv2d(x, hw, padding=(1, 0), groups=c)
    fhv = F.conv2d(fh, vw, padding=(0, 1), groups=c)
    fv = F.conv2d(x, vw, padding=(0, 1), groups=c)
    g = torch.relu(x.mean(dim=(2, 3)) @ sd[p + ".mlp.0.weight"].T)
    w = torch.sigmoid(g @ sd[p + ".mlp.2.weight"].T + sd[p + ".mlp.2.bias"])
    f = w[:, 0, None, None, None] * fh + w[:, 1, None, None, None] * fhv + w[:, 2, None, None, None] * fv
    return F.conv2d(F.conv2d(f, sd[p + ".conv_reduce.weight"]), sd[p + ".conv_expand.weight"])


def _resnet(sd, p, x, groups):
    h = _fsc(sd, p + ".conv1", F.silu(_gn(sd, p + ".norm1", x, groups, 1e-5)))
    h = _dsc(sd, p + ".conv2", F.silu(_gn(sd, p + ".norm2", h, groups, 1e-5)))
    if p + ".conv_shortcut.weight" in sd:
        x = F.conv2d(x, sd[p + ".conv_shortcut.weight"], sd[p + ".conv_shortcut.bias"])
    return x + h


def _lin(sd, p, x):
    return x @ sd[p + ".weight"].T + (sd[p + ".bias"] if p + ".bias" in sd else 0)


def _qgam(sd, p, t):
    c = t.shape[-1]
    q = sd[p + ".query"] @ sd[p + ".q_proj.weight"].T
    k, v = _lin(sd, p + ".k_proj", t), _lin(sd, p + ".v_proj", t)
    a = torch.softmax(torch.einsum("nd,bld->bnl", q, k) * c**-0.5, dim=-1)
    ctx = torch.einsum("bnl,bld->bnd", a, v)
    q2, k2, v2 = _lin(sd, p + ".q_proj_c", t), _lin(sd, p + ".k_proj_c", ctx), _lin(sd, p + ".v_proj_c", ctx)
    a2 = torch.softmax(torch.einsum("bld,bnd->bln", q2, k2) * c**-0.5, dim=-1)
    return _lin(sd, p + ".out_proj", torch.einsum("bln,bnd->bld", a2, v2))


def _transformer(sd, p, x, groups):
    b, c, h, w = x.shape
    t = _gn(sd, p + ".norm", x, groups, 1e-6).permute(0, 2, 3, 1).reshape(b, h * w, c)
    t = _lin(sd, p + ".proj_in", t)
    bp = p + ".transformer_blocks.0"
    t = t + _qgam(sd, bp + ".attn1", F.layer_norm(t, (c,), sd[bp + ".norm1.weight"], sd[bp + ".norm1.bias"]))
    n3 = F.layer_norm(t, (c,), sd[bp + ".norm3.weight"], sd[bp + ".norm3.bias"])
    hid, gate = _lin(sd, bp + ".ff.net.0.proj", n3).chunk(2, dim=-1)
    t = t + _lin(sd, bp + ".ff.net.2", hid * F.gelu(gate))
    t = _lin(sd, p + ".proj_out", t)
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2) + x


def _tiny_block(sd, p, x):
    h = torch.relu(F.conv2d(x, sd[p + ".conv.0.weight"], sd[p + ".conv.0.bias"], padding=1))
    h = torch.relu(F.conv2d(h, sd[p + ".conv.2.weight"], sd[p + ".conv.2.bias"], padding=1))
    h = F.conv2d(h, sd[p + ".conv.4.weight"], sd[p + ".conv.4.bias"], padding=1)
    return torch.relu(h + x)


def _count(sd, pattern):
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, groups: int = 32) -> torch.Tensor:
    """The release's student forward, flat and literal."""
    # Encoder: every layer but the last (latent conv); stride-2 convs have no bias.
    n_enc = _count(sd, r"vae\.encoder\.layers\.(\d+)\.")
    for i in range(n_enc - 1):
        p = f"vae.encoder.layers.{i}"
        if p + ".weight" in sd:
            stride = 1 if i == 0 else 2
            x = F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), stride=stride, padding=1)
        else:
            x = _tiny_block(sd, p, x)
    x = F.conv2d(x, sd["merge_conv1.weight"], sd["merge_conv1.bias"], padding=1)
    skip = [x]
    n_down = _count(sd, r"unet\.down_blocks\.(\d+)\.")
    for d in range(n_down):
        p = f"unet.down_blocks.{d}"
        for i in range(_count(sd, p.replace(".", r"\.") + r"\.resnets\.(\d+)\.")):
            x = _transformer(sd, f"{p}.attentions.{i}", _resnet(sd, f"{p}.resnets.{i}", x, groups), groups)
            skip.append(x)
        if p + ".downsamplers.0.conv.weight" in sd:
            x = F.conv2d(
                x,
                sd[p + ".downsamplers.0.conv.weight"],
                sd[p + ".downsamplers.0.conv.bias"],
                stride=2,
                padding=1,
            )
            skip.append(x)
    x = _resnet(sd, "unet.mid_block.mid_block", x, groups)
    for u in range(_count(sd, r"unet\.up_blocks\.(\d+)\.")):
        p = f"unet.up_blocks.{u}"
        for i in range(_count(sd, p.replace(".", r"\.") + r"\.resnets\.(\d+)\.")):
            x = _resnet(sd, f"{p}.resnets.{i}", torch.cat([x, skip.pop()], dim=1), groups)
            x = _transformer(sd, f"{p}.attentions.{i}", x, groups)
        if p + ".upsamplers.0.conv.weight" in sd:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.conv2d(x, sd[p + ".upsamplers.0.conv.weight"], sd[p + ".upsamplers.0.conv.bias"], padding=1)
    assert not skip, "every skip must be consumed"
    x = F.silu(_gn(sd, "unet.conv_norm_out", x, groups, 1e-5))
    x = F.conv2d(x, sd["merge_conv2.weight"], sd["merge_conv2.bias"], padding=1)
    # Decoder: skip layer 0 (latent conv); ReLU, blocks, nearest x2 + conv (no bias), final conv.
    x = torch.relu(x)
    pattern = r"vae\.decoder\.layers\.(\d+)\."
    n_dec = _count(sd, pattern)
    last = max(int(re.match(pattern, k).group(1)) for k in sd if k.startswith("vae.decoder"))
    for i in range(2, last + 1):
        p = f"vae.decoder.layers.{i}"
        if p + ".conv.0.weight" in sd:
            x = _tiny_block(sd, p, x)
        elif p + ".weight" in sd:
            x = F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), padding=1)
        else:  # parameter-free layer between a block and a conv: the x2 upsampler
            x = F.interpolate(x, scale_factor=2, mode="nearest")
    assert n_dec > 0
    return x


def _randomize(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights with realistic scale (default init leaves norms at 1/0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("paper", [True, False], ids=["paper-student", "compact"])
def test_forward_matches_independent_reference(paper: bool, tiny_config: StudentConfig) -> None:
    cfg = StudentConfig() if paper else tiny_config
    torch.manual_seed(1)
    model = SlimDiffSRStudent(cfg).eval()
    sd = _randomize(model, 2)
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        _, ours = model(x)
        ref = reference_forward(sd, x, cfg.norm_groups)
    assert ours.shape == (2, 3, 64, 48)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4, diff
    assert ours.std() > 1e-3  # the comparison is not between two constant images


def test_release_key_set_and_parameter_count() -> None:
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} not found (shared docs only on development and CI machines)")
    release = {}
    for line in KEYS_FILE.read_text().splitlines():
        name, shape = line.split(" ", 1)
        release[name.removeprefix("module.")] = [int(s) for s in re.findall(r"\d+", shape)]
    model = SlimDiffSRStudent()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == release
    assert len(ours) == 596
    assert sum(p.numel() for p in model.parameters()) == 58_053_402


def test_skip_stack_is_local_and_calls_are_independent(tiny_config: StudentConfig) -> None:
    """Two interleaved forwards give the same result as separate ones (no shared skip state)."""
    model = SlimDiffSRStudent(tiny_config).eval()
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 32)
    with torch.no_grad():
        ya = model(a)[1]
        yb = model(b)[1]
        yab = model(torch.cat([a, a]))[1]
    assert torch.allclose(yab[0], ya[0], atol=1e-5) and torch.allclose(yab[1], ya[0], atol=1e-5)
    assert yb.shape == (1, 3, 64, 32)


def test_config_round_trip_and_validation(tiny_config: StudentConfig) -> None:
    assert StudentConfig.from_json(tiny_config.to_json()) == tiny_config
    assert StudentConfig().downscale == 16
    with pytest.raises(ValueError, match="norm_groups"):
        StudentConfig(unet_channels=(30, 64, 64), norm_groups=8).validate()
    with pytest.raises(ValueError, match="unknown architecture fields"):
        StudentConfig.from_dict({"widths": [1]})


def test_input_residual_adds_the_bicubic_input(tiny_config: StudentConfig) -> None:
    """Compact students may learn only the detail missing from the bicubic input."""
    import dataclasses

    cfg = dataclasses.replace(tiny_config, input_residual=True)
    model = SlimDiffSRStudent(cfg).eval()
    plain = SlimDiffSRStudent(tiny_config).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x)[1], plain(x)[1] + x, atol=1e-6)
        last = model.vae.decoder.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
        assert torch.equal(model(x)[1], x)
    assert StudentConfig.from_json(cfg.to_json()).input_residual
