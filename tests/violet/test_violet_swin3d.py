"""VIOLET's real backbone: torchvision's Video Swin layout (:mod:`polymodal.models.violet.swin3d`).

References, made once with torchvision's own module (torchvision 0.28.0,
``torchvision/models/video/swin_transformer.py``, imported by path from the wheel; see
``fixtures/make_swin3d_reference.py``):

* ``fixtures/swin3d_layout.json``: every state-dict name and shape of torchvision's full-size
  ``swin3d_t / s / b``;
* ``fixtures/swin3d_reference.safetensors``: a reduced ``SwinTransformer3d`` (width 4, depths
  2/2/2/2, window 2 x 2 x 2, 5 classes) seeded by torchvision, an input clip and torchvision's
  features and logits on it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polymodal import storage
from polymodal.errors import PolymodalError
from polymodal.models.violet import swin3d
from polymodal.models.violet.config import VioletConfig, paper
from polymodal.models.violet.model import VideoEncoder

FIXTURES = Path(__file__).parent / "fixtures"
#: the reduced torchvision config of the reference fixture
REDUCED = dict(embed_dim=4, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=(2, 2, 2))
#: torchvision's ``meta["num_params"]`` of Swin3D_{T,S,B}_Weights
NUM_PARAMS = {"swin3d_t": 28158070, "swin3d_s": 49816678, "swin3d_b": 88048984}


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "swin3d_reference.safetensors"))


def _torchvision_state(reference) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in reference.items() if k.startswith("model.")}


def _reduced_cfg(**kw) -> VioletConfig:
    """A VIOLET config on the reference's reduced swin3d_t: 32 px frames, last-stage grid 1 x 1."""
    kw = {"image_size": 32, **kw}
    return VioletConfig(bert="unused", visual="swin3d_t", swin3d_embed_dim=4,
                        swin3d_depths=(2, 2, 2, 2), swin3d_heads=(1, 1, 2, 2), swin_window=(2, 2, 2), **kw)


@pytest.mark.parametrize("arch", sorted(swin3d.ARCHS))
def test_parameter_names_and_shapes_are_torchvisions(arch):
    layout = json.loads((FIXTURES / "swin3d_layout.json").read_text())[arch]
    with torch.device("meta"):
        tv_shaped = swin3d.build(arch, patch_size=swin3d.TORCHVISION_PATCH, num_classes=400)
        ours = swin3d.build(arch)  # VIOLET's: one-frame patches, no classifier
    assert {k: list(v.shape) for k, v in tv_shaped.state_dict().items()} == layout
    assert sum(p.numel() for p in tv_shaped.parameters()) == NUM_PARAMS[arch]
    mine = {k: list(v.shape) for k, v in ours.state_dict().items()}
    assert set(mine) == {k for k in layout if not k.startswith("head.")}
    differ = {k for k in mine if mine[k] != layout[k]}
    assert differ == {"patch_embed.proj.weight"} and mine["patch_embed.proj.weight"][2] == 1


def test_outputs_match_torchvisions_reference(reference):
    model = swin3d.SwinTransformer3d(swin3d.TORCHVISION_PATCH, num_classes=5, **REDUCED).eval()
    model.load_state_dict(_torchvision_state(reference))
    clip = reference["input"].float()  # (1, 3, 8, 64, 64)
    with torch.no_grad():
        features, logits = model.forward_features(clip), model(clip)
    assert features.shape == reference["features"].shape == (1, 4, 2, 2, 32)
    torch.testing.assert_close(features, reference["features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, reference["logits"], atol=1e-5, rtol=1e-5)
    # the check has teeth: one weight nudged moves the features well past the tolerance
    model.features[2][1].attn.relative_position_bias_table.data[0] += 0.5
    with torch.no_grad():
        assert (model.forward_features(clip) - reference["features"]).abs().max() > 1e-3


def test_folded_patch_kernel_keeps_a_still_clips_response(reference, tmp_path):
    """Summing torchvision's 2-frame kernel: VIOLET's one-frame model on T still frames gives what
    torchvision's model gives on 2T copies of the frame."""
    path = tmp_path / "tv.safetensors"
    save_file(_torchvision_state(reference), str(path))
    tv = swin3d.SwinTransformer3d(swin3d.TORCHVISION_PATCH, num_classes=5, **REDUCED).eval()
    tv.load_state_dict(_torchvision_state(reference))
    ours = swin3d.SwinTransformer3d(swin3d.VIOLET_PATCH, **REDUCED).eval()
    swin3d.load_torchvision_weights(ours, str(path), arch="swin3d_t")
    still = reference["input"].float()[:, :, :1, :32, :32]  # (1, 3, 1, 32, 32): one frame
    with torch.no_grad():
        expected = tv.forward_features(still.expand(-1, -1, 8, -1, -1))  # 8 frames -> 4 temporal tokens
        got = ours.forward_features(still.expand(-1, -1, 4, -1, -1))  # 4 frames, one token each
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    moving = reference["input"].float()[:, :, :4, :32, :32]
    with torch.no_grad():
        assert ours.forward_features(moving).shape == (1, 4, 1, 1, 32)  # every frame keeps its tokens


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_visual_weights_round_trip(reference, tmp_path, fmt, where, request):
    """A torchvision-layout checkpoint (head included) reaches VIOLET's backbone through
    ``model.visual_weights`` unchanged, the patch kernel folded."""
    state = _torchvision_state(reference)
    if fmt == "pth":
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
    else:
        save_file(state, str(tmp_path / "w.safetensors"))
        data = (tmp_path / "w.safetensors").read_bytes()
    if where == "local":
        uri = str(tmp_path / f"swin3d.{fmt}")
        Path(uri).write_bytes(data)
    else:
        uri = f"{request.getfixturevalue('s3_bucket_uri')}/weights/swin3d.{fmt}"
        storage.write_bytes(uri, data)
    encoder = VideoEncoder(_reduced_cfg(visual_weights=uri))
    loaded = encoder.swin.state_dict()
    for name, value in state.items():
        if name.startswith("head."):
            assert name not in loaded
        elif name == "patch_embed.proj.weight":
            torch.testing.assert_close(loaded[name], value.sum(dim=2, keepdim=True))
        else:
            assert torch.equal(loaded[name], value), name


def test_visual_weights_errors_name_the_field(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PolymodalError, match=r"model.visual_weights 'KINETICS400_V1'.*HF_HUB_OFFLINE=1"):
        VideoEncoder(_reduced_cfg(visual_weights="KINETICS400_V1"))
    with pytest.raises(PolymodalError, match=r"KINETICS400_IMAGENET22K_V1.*not a torchvision weights name.*swin3d_t"):
        VideoEncoder(_reduced_cfg(visual_weights="KINETICS400_IMAGENET22K_V1"))
    with pytest.raises(PolymodalError, match="no such file"):
        VideoEncoder(_reduced_cfg(visual_weights=str(tmp_path / "missing.pth")))
    narrower = {k: v for k, v in _torchvision_state(reference).items()}
    narrower["norm.weight"] = torch.ones(7)
    save_file(narrower, str(tmp_path / "bad.safetensors"))
    with pytest.raises(PolymodalError, match=r"does not fit.*norm.weight \(7,\) vs ours \(32,\)"):
        VideoEncoder(_reduced_cfg(visual_weights=str(tmp_path / "bad.safetensors")))
    with pytest.raises(ValueError, match="visual_weights are torchvision swin3d weights"):
        VioletConfig(bert="unused", visual="swin", visual_weights="x.pth")


def test_paper_preset_cuts_shifted_windows_smaller_than_the_grid():
    """Video Swin-B at the paper's input (T = 4 frames of 224 px): stages 1-3 cut their 56 / 28 / 14
    grids into 7 x 7 windows and every other block shifts them by (0, 3, 3); the last stage's 7 x 7
    tokens per frame are one window and the video tokens. (Built on the meta device: no memory.)"""
    cfg = VioletConfig(bert="unused", **paper())
    assert (cfg.visual, cfg.visual_weights, cfg.image_size, cfg.swin_window) == ("swin3d_b", "KINETICS400_V1", 224,
                                                                                   (8, 7, 7))
    assert cfg.visual_dim == 1024 and cfg.pixel_stats == (swin3d.KINETICS400_MEAN, swin3d.KINETICS400_STD)
    with torch.device("meta"):
        model = swin3d.build(cfg.visual, window_size=cfg.swin_window)
    assert cfg.image_size // model.stride == cfg.grid == 7
    stages = [stage for stage in model.features if isinstance(stage, torch.nn.Sequential)]
    assert [len(s) for s in stages] == [2, 2, 18, 2]
    for i, stage in enumerate(stages):
        side = cfg.image_size // 4 // 2 ** i  # 56, 28, 14, 7
        for j, block in enumerate(stage):
            window, shift = block.attn.windows((cfg.frames, side, side))
            if side > 7:  # T = 4 < 8 frames: one window in time, no temporal shift
                assert window == (4, 7, 7) and shift == ((0, 3, 3) if j % 2 else (0, 0, 0))
            else:
                assert window == (4, 7, 7) and shift == (0, 0, 0)  # stage 4: the whole 7 x 7 grid


@pytest.mark.slow
def test_paper_preset_forward_at_224_px():
    """The paper's input through Swin-B's depths and window at a narrow width: 4 x 7 x 7 tokens out,
    and the blocks of stages 1-3 ran windows smaller than their grids, shifted in alternate blocks."""
    cfg = VioletConfig(bert="unused", **paper())
    model = swin3d.build(cfg.visual, embed_dim=8, num_heads=(1, 1, 1, 1), window_size=cfg.swin_window).eval()
    seen = []
    for block in model.blocks():
        block.attn.register_forward_hook(
            lambda m, inp, _out: seen.append((tuple(inp[0].shape[1:4]), *m.windows(inp[0].shape[1:4]))))
    frames = torch.randn(1, 4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.forward_features(frames.transpose(1, 2))
    assert out.shape == (1, 4, 7, 7, 64)  # (B, T, 7, 7, 8 * width): one token per frame and 32 px
    assert len(seen) == 24
    for i, (grid, window, shift) in enumerate(seen[:22]):
        assert grid[1] in (56, 28, 14) and grid[1] > window[1] == 7
        assert shift == ((0, 3, 3) if i % 2 else (0, 0, 0))


def test_shifted_block_crosses_window_borders():
    """At the paper's stage-3 grid (14 x 14), a token's change reaches across a 7 x 7 window border only
    through a shifted block (the shifted windows really run)."""
    torch.manual_seed(0)
    plain, shifted = (swin3d.SwinTransformerBlock(8, 1, (8, 7, 7), s).eval() for s in ((0, 0, 0), (4, 3, 3)))
    x = torch.randn(1, 4, 14, 14, 8)  # stage 3's grid
    y = x.clone()
    y[0, 0, 6, 6] += torch.randn(8)  # last token of the first window (not a constant: LayerNorm removes those)
    with torch.no_grad():
        for block, window in ((plain, slice(0, 7)), (shifted, slice(3, 10))):
            changed = (block(y) - block(x)).abs().sum(-1)[0, 0] > 1e-6  # (14, 14) at frame 0
            expected = torch.zeros(14, 14, dtype=torch.bool)
            expected[window, window] = True  # exactly the window holding (6, 6): [0, 7) plain, [3, 10) shifted
            assert torch.equal(changed, expected)
    assert bool(expected[7, 7])  # the shifted window reaches the diagonal neighbour of the first plain one


@pytest.mark.parametrize("mode", ["swin", "mean", "concat"])
def test_table3_ablations_on_swin3d(mode):
    """Table 3's temporal modelling on the real backbone: ``swin`` attends across frames, ``concat``
    keeps each frame to itself, ``mean`` averages the frames (order cannot matter)."""
    torch.manual_seed(0)
    encoder = VideoEncoder(_reduced_cfg(video_encoder=mode, use_mvm=mode != "mean")).eval()
    frames = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    changed = frames.clone()
    changed[:, 3] = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, out_changed = encoder(frames), encoder(changed)
        assert out.shape == (1, 1 if mode == "mean" else 4, 1, 1, 32)
        assert encoder.num_tokens(4) == out[0].numel() // 32
        if mode == "mean":
            torch.testing.assert_close(encoder(frames.flip(1)), out, atol=1e-5, rtol=1e-5)
        else:  # does frame 3 reach frame 0's tokens?
            reaches = not torch.allclose(out_changed[:, 0], out[:, 0], atol=1e-6)
            assert reaches is (mode == "swin")
