"""Visual tokenizers for masked visual-token modelling (MVM): frames -> one discrete code per
patch position, the classes the MVM head predicts for masked patches.

:class:`VisualTokenizer` is the interface; :class:`VQGANTokenizer` the default, a diffusers
``VQModel`` (VQ-GAN) whose encoder downsamples by ``f``: frames are resized to ``grid * f``
pixels so the latent grid is the patch grid (7 x 7 for 224 px frames with 32 px patches), and
each latent is replaced by the index of its nearest codebook vector. A DALL-E dVAE would plug in
behind the same interface (``encode`` + ``vocab_size``). Codes are computed once, at ingestion.
Tests and the demo use a random one (:func:`polymodal.testing.tiny.write_tiny_vqgan`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class VisualTokenizer(ABC):
    """Frames -> codes on the patch grid."""

    #: number of distinct codes (the MVM head's classes)
    vocab_size: int
    #: (rows, cols) of the code grid per frame
    grid: tuple[int, int]

    @abstractmethod
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N, rows, cols) int64 codes in ``[0, vocab_size)``."""


class VQGANTokenizer(VisualTokenizer):
    """Nearest-codebook indices of a diffusers ``VQModel`` (loaded with ``from_pretrained``)."""

    def __init__(self, path: str, grid: tuple[int, int] = (7, 7), device: str | None = None, batch_size: int = 64):
        from diffusers import VQModel

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = VQModel.from_pretrained(path).requires_grad_(False).eval().to(self.device)
        self.factor = 2 ** (len(self.model.config.block_out_channels) - 1)
        self.grid = (int(grid[0]), int(grid[1]))
        self.vocab_size = int(self.model.config.num_vq_embeddings)
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        size = (self.grid[0] * self.factor, self.grid[1] * self.factor)
        out = []
        for start in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(frames[start:start + self.batch_size]).to(self.device).permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            latents = self.model.encode(x / 127.5 - 1.0).latents  # (n, d, rows, cols), before quantisation
            indices = self.model.quantize(latents)[2][2]  # (n * rows * cols,)
            out.append(indices.view(len(x), *self.grid).cpu().numpy().astype(np.int64))
        return np.concatenate(out) if out else np.zeros((0, *self.grid), dtype=np.int64)
