"""The VQ-GAN visual tokenizer: one code per patch position, the nearest codebook vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal.models.violet.synth import sample_clip
from polymodal.models.violet.tokenizer import VQGANTokenizer
from polymodal.testing.tiny import write_tiny_vqgan


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return VQGANTokenizer(write_tiny_vqgan(str(tmp_path_factory.mktemp("vq"))), grid=(7, 7), device="cpu")


def test_codes_are_the_nearest_codebook_vectors_on_the_patch_grid(tokenizer):
    frames = sample_clip(np.random.default_rng(0), n_frames=3, size=224)["frames"]
    codes = tokenizer.encode(frames)
    assert codes.shape == (3, 7, 7) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < tokenizer.vocab_size == 64
    # independently: resize, encode, and take argmin of squared distances to the codebook
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(56, 56), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        z = tokenizer.model.encode(x / 127.5 - 1).latents.permute(0, 2, 3, 1)  # (3, 7, 7, d)
    book = tokenizer.model.quantize.embedding.weight  # (64, d)
    nearest = ((z[..., None, :] - book) ** 2).sum(-1).argmin(-1).numpy()
    assert (nearest == codes).mean() > 0.99  # ties at float precision aside
    assert np.array_equal(tokenizer.encode(frames), codes)  # deterministic


def test_bad_frames_are_refused(tokenizer):
    with pytest.raises(ValueError, match="uint8"):
        tokenizer.encode(np.zeros((2, 32, 32, 3), dtype=np.float32))
    assert tokenizer.encode(np.zeros((0, 32, 32, 3), dtype=np.uint8)).shape == (0, 7, 7)
