"""Raw recipe shards -> feature shards, so that training streams features, not JPEGs.

:class:`FeatureExtractor` is a Ray Data callable class: each actor of the pool loads the frozen
CLIP vision encoder and the SD text encoder once (on its GPU when it has one) and adds
``clip_image`` (``v_phi`` of the image) and ``sd_target`` (``T_psi`` of the recipe) to every batch.
:func:`extract_features` runs it over a raw dataset with ``map_batches`` and an actor pool and
writes the result with :class:`~polymodal.shards.ShardWriter` (manifest, checksums); with
``use_ray=False`` the same extractor runs in this process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from polymodal import shards
from polymodal.config import StorageOptions
from polymodal.errors import PolymodalError

from .backbones import backbone_dims
from .data import RAW_COLUMNS, TASK, feature_columns


class FeatureExtractor:
    """``batch -> batch + {clip_image, sd_target}`` for numpy batches of raw rows."""

    def __init__(self, clip: str, sd: str, opts: dict[str, Any] | None = None, device: str | None = None,
                 target_dtype: str = "float16"):
        from .backbones import load_clip, load_sd_text_encoder

        storage = StorageOptions(**opts) if opts else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.clip, self.processor = load_clip(clip, storage, dtype, self.device)
        self.tokenizer, self.text_encoder = load_sd_text_encoder(sd, storage, dtype, self.device)
        self.target_dtype = np.dtype(target_dtype)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(d_clip, L, d_sd) of the columns this extractor adds."""
        return (self.clip.config.hidden_size, self.tokenizer.model_max_length,
                self.text_encoder.config.hidden_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .backbones import clip_image_features, decode_image, sd_text_targets

        ids = [str(i) for i in batch["id"]]
        images = [decode_image(bytes(b), where=f"recipe {i}: image") for i, b in zip(ids, batch["image"])]
        out = dict(batch)
        out["clip_image"] = clip_image_features(self.clip, self.processor, images).float().cpu().numpy()
        texts = [str(t) for t in batch["recipe"]]
        targets = sd_text_targets(self.tokenizer, self.text_encoder, texts).float().cpu().numpy()
        out["sd_target"] = targets.astype(self.target_dtype)
        return out


def extract_features(raw_uri: str, out_uri: str, *, clip: str, sd: str, opts: StorageOptions | None = None,
                     batch_size: int = 64, use_ray: bool = True, concurrency: int | None = None,
                     target_dtype: str = "float16", rows_per_shard: int = 2048, progress: bool = True) -> shards.Manifest:
    """Write the features dataset of the raw dataset at ``raw_uri`` to ``out_uri``.

    ``use_ray``: ``map_batches`` over a pool of ``concurrency`` actors (default: one per GPU, or
    one per two CPUs), each holding both encoders; one GPU per actor when the cluster has GPUs.
    """
    manifest = shards.open_dataset(raw_uri, opts)
    missing = sorted(set(RAW_COLUMNS) - set(manifest.columns))
    if manifest.task != TASK or missing:
        raise PolymodalError(f"{raw_uri} is not a raw {TASK} dataset (task {manifest.task!r}, missing columns "
                             f"{missing}); write one with `polymodal data import --format recipe1m` or synth")
    kwargs = {"clip": clip, "sd": sd, "opts": opts.model_dump() if opts else None, "target_dtype": target_dtype}
    probe = FeatureExtractor(**kwargs) if not use_ray else None
    d_clip, n_tok, d_sd = probe.dims if probe else backbone_dims(clip, sd, opts)
    meta = {**manifest.meta, "stage": "features", "raw": raw_uri, "clip": clip, "sd": sd}
    with shards.ShardWriter(out_uri, task=TASK, split=manifest.split, columns=feature_columns(d_clip, n_tok, d_sd, target_dtype),
                            rows_per_shard=rows_per_shard, meta=meta, opts=opts, progress=progress) as writer:
        if probe is not None:
            for batch in shards.iter_local_batches(raw_uri, batch_size, manifest=manifest, shuffle=False,
                                                   shuffle_buffer=0, opts=opts):
                writer.write(probe(batch))
        elif manifest.num_rows:
            for batch in _ray_batches(raw_uri, manifest, kwargs, batch_size, concurrency, opts):
                writer.write(batch)
    return writer.close()


def _ray_batches(raw_uri: str, manifest: shards.Manifest, kwargs: dict[str, Any], batch_size: int,
                 concurrency: int | None, opts: StorageOptions | None):
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    if concurrency is None:
        cpus = int(ray.cluster_resources().get("CPU", 2)) if ray.is_initialized() else 2
        concurrency = gpus or max(1, cpus // 2)
    ds = shards.ray_dataset(raw_uri, manifest=manifest, opts=opts, shuffle=False)
    ds = ds.map_batches(FeatureExtractor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=1 if gpus else 0,
                        num_cpus=1)
    yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy")
