"""Records -> a VIOLET dataset (:mod:`.data`): decode, sample, resize and JPEG-pack the frames.

:class:`FrameExtractor` is a Ray Data callable class: each actor decodes its batch's videos with
PyAV, takes T frames, resizes them to ``size x size``, packs them as JPEGs and, for pre-training,
loads the visual tokenizer once (on its GPU when it has one) and adds the ``vt_codes`` targets.
:func:`ingest` streams the records ``rows_per_shard`` at a time: each chunk goes through
``from_items`` + ``map_batches`` over an actor pool (with ``use_ray=False``, the same extractor in
this process) and becomes one shard of a :class:`~polymodal.shards.ShardWriter` (manifest last);
``import-progress.json`` beside the shards lets a rerun of an interrupted import continue after its
last finished shard.

Choices made here
-----------------
* Frames are sampled at the **middle** of each of T equal segments (:func:`~.video.sample_indices`
  without ``rng``): one fixed clip per video, so a dataset is reproducible. Training-time random
  sampling inside segments would need the whole video in the shard; VIOLET's sparse sampling
  uses few frames either way.
* ``vt_codes`` are the tokenizer's codes of the decoded, resized frames **before** JPEG
  compression: the targets describe the video, not the JPEG artefacts of its stored copy.
* An image is a T=1 clip, not an image repeated T times (VIOLET treats images as single-frame
  videos), so image records go in datasets ingested with ``n_frames=1``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import ImportDataError
from polymodal.imports import PROGRESS_NAME, ImportProgress, import_key
from polymodal.shards import Manifest, ShardWriter

from .data import TASKS, answer_vocab, check_kind, columns, normalise_answer
from .importers import Parsed, Record
from .video import decode_frames, pack_jpegs

__all__ = ["FrameExtractor", "ingest", "PROGRESS_NAME"]

logger = logging.getLogger(__name__)



class FrameExtractor:
    """``batch of record items -> batch of dataset columns`` (numpy batches, Ray Data style).

    A bad source raises :class:`~polymodal.errors.ImportDataError` naming the file and its source
    row; with ``skip_bad`` the row is logged and left out of the output batch instead.
    """

    def __init__(self, kind: str, n_frames: int, size: int = 224, tokenizer_path: str | None = None,
                 grid: tuple[int, int] = (7, 7), opts: dict[str, Any] | None = None, skip_bad: bool = False,
                 quality: int = 90, device: str | None = None):
        self.kind, self.n_frames, self.size = check_kind(kind), n_frames, size
        self.grid = (int(grid[0]), int(grid[1]))
        self.opts = StorageOptions(**opts) if opts else None
        self.skip_bad, self.quality = skip_bad, quality
        self.tokenizer = None
        if kind == "pretrain":
            from .tokenizer import VQGANTokenizer

            self.tokenizer = VQGANTokenizer(tokenizer_path, grid=self.grid, device=device)

    def _read(self, source: str) -> str | bytes:
        # PyAV and PIL open local paths themselves; objects on S3 are fetched whole
        return storage.read_bytes(source, self.opts) if storage.is_s3(source) else source

    def _frames(self, source: str, image: bool) -> np.ndarray:
        """(T, size, size, 3) uint8 of one record; ValueError naming ``source`` when unreadable."""
        try:
            data = self._read(source)
        except FileNotFoundError:
            raise ValueError(f"{source}: file not found") from None
        if not image:
            return decode_frames(data, self.n_frames, self.size, where=source)
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                rgb = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        except Exception as exc:  # noqa: BLE001 -- PIL raises several types for broken images
            raise ValueError(f"{source}: cannot decode image ({type(exc).__name__}: {exc})") from None
        return np.asarray(rgb)[None]  # (1, size, size, 3)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        keep, clips = [], []
        for i, (source, image, where) in enumerate(zip(batch["source"], batch["image"], batch["where"])):
            try:
                clips.append(self._frames(str(source), bool(image)))
            except ValueError as exc:
                message = f"{exc} (row {where})"
                if not self.skip_bad:
                    raise ImportDataError(message + "; pass skip_bad=True to leave such rows out") from None
                logger.warning("skipped %s", message)
                continue
            keep.append(i)
        frames = np.stack(clips) if clips else np.zeros((0, self.n_frames, self.size, self.size, 3), np.uint8)
        packed = [pack_jpegs(clip, self.quality) for clip in frames]  # (B, T, S, S, 3) -> B x (bytes, (T,))
        out: dict[str, Any] = {name: np.asarray(batch[name])[keep] for name in ("id", "video", "text")}
        out["frames"] = np.array([blob for blob, _ in packed] or [], dtype=object)
        out["frame_bytes"] = np.stack([n for _, n in packed]) if packed else np.zeros((0, self.n_frames), np.int32)
        if self.tokenizer is not None:
            b = len(frames)
            codes = self.tokenizer.encode(frames.reshape(b * self.n_frames, self.size, self.size, 3))
            out["vt_codes"] = codes.reshape(b, self.n_frames, *self.grid)  # (B, T, rows, cols)
        if self.kind == "mcqa":
            out["options"] = np.asarray(batch["options"])[keep]
        if self.kind in ("mcqa", "oeqa"):
            out["answer"] = np.asarray(batch["answer"], dtype=np.int64)[keep]
        if self.kind == "oeqa":
            out["answer_text"] = np.asarray(batch["answer_text"])[keep]
        return out


def _check_record(r: Record, kind: str, n_frames: int, seen: set[str]) -> None:
    if r.id in seen:
        raise ImportDataError(f"{r.where}: row id {r.id!r} repeats an earlier row's; ids must be unique")
    seen.add(r.id)
    if r.image and n_frames != 1:
        raise ValueError(f"{r.where}: {r.source} is an image, a T=1 clip; ingest image records in a dataset "
                         f"of their own with n_frames=1 (got n_frames={n_frames})")
    if kind == "mcqa" and not 0 <= r.answer < len(r.options):
        raise ValueError(f"{r.where}: an mcqa record needs options and an answer index into them; "
                         "read it with read_mcqa or read_tgif_qa")
    if kind == "oeqa" and not r.answer_text:
        raise ValueError(f"{r.where}: an oeqa record needs an answer_text; read it with read_oeqa, "
                         "read_msrvtt_qa or read_tgif_qa")


def _batches(items: list[dict[str, Any]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Items -> numpy batches shaped as Ray Data hands them to ``map_batches``."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        yield {key: np.array([it[key] for it in chunk], dtype=object if isinstance(chunk[0][key], str) else None)
               for key in chunk[0]}


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _vq_vocab_size(path: str) -> int:
    """Codebook size of a diffusers ``VQModel`` (a local folder or a hub id), read from its config
    without loading the weights."""
    config = os.path.join(path, "config.json")
    try:
        if os.path.isdir(path):
            with open(config, encoding="utf-8") as f:
                return int(json.load(f)["num_vq_embeddings"])
        from diffusers import VQModel

        return int(VQModel.load_config(path)["num_vq_embeddings"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{config}: not a saved diffusers VQModel ({exc}); pass tokenizer_path=<a folder "
                         "written by VQModel.save_pretrained, e.g. polymodal.testing.tiny.write_tiny_vqgan>") from None


def _import_key(records: Sequence[Record] | Parsed, settings: dict[str, Any], opts: StorageOptions | None) -> str:
    """What an import's output depends on: its source files as they are now (or, for records
    given directly, their ids, texts and sources) and every setting."""
    if isinstance(records, Parsed):
        return import_key(records.inputs, settings, opts)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode())
    for r in records:
        digest.update(f"{r.id}\0{r.source}\0{r.text}\n".encode())
    return digest.hexdigest()


def ingest(
    records: Iterable[Record] | Parsed,
    out_uri: str,
    *,
    kind: str,
    split: str,
    n_frames: int,
    size: int = 224,
    tokenizer_path: str | None = None,
    grid: tuple[int, int] = (7, 7),
    answers: Sequence[str] | None = None,
    top_k: int = 1000,
    use_ray: bool = True,
    concurrency: int | None = None,
    batch_size: int = 16,
    rows_per_shard: int = 1024,
    quality: int = 90,
    meta: dict[str, Any] | None = None,
    opts: StorageOptions | None = None,
    skip_bad: bool = False,
    progress: bool | str = True,
    resume: bool = True,
) -> Manifest:
    """Write the records as one VIOLET dataset of ``kind`` at ``out_uri``.

    Records are taken ``rows_per_shard`` at a time: each chunk is decoded (in this process, or by
    a Ray Data actor pool) and written as one shard, and ``out_uri/import-progress.json`` then
    records how far the import got. Running the same import again (same source files as they are
    now, same settings) continues after the last finished shard; once the manifest is written the
    progress file is removed, and a rerun of a finished import returns its manifest untouched.

    Parameters
    ----------
    records : Parsed, or iterable of Record
        From :mod:`.importers` (a :class:`~.importers.Parsed` is streamed, and also records its
        file, skipped and missing rows in the manifest's meta), or records made otherwise.
    kind : str
        One of :data:`~.data.KINDS`; the task is ``TASKS[kind]``.
    n_frames : int
        T, frames per clip (4 for pre-training, 5 for fine-tuning in the paper; 1 for images).
    size : int
        Frames are resized (squashed) to ``size x size``.
    tokenizer_path : str, optional
        A saved diffusers ``VQModel`` (:class:`~.tokenizer.VQGANTokenizer`); required for
        ``pretrain``, whose ``vt_codes`` column is (T, *grid).
    answers : sequence of str, optional
        ``oeqa``: the answer vocabulary. Default for the train split: its ``top_k`` most frequent
        answers (:func:`~.data.answer_vocab`); other splits must pass the train dataset's
        ``manifest.meta["answer_vocab"]``.
    use_ray : bool
        Run :class:`FrameExtractor` in a Ray Data actor pool of ``concurrency`` actors (default: one
        per GPU for pre-training on a GPU cluster, else one per two CPUs), one GPU per actor when
        the tokenizer has GPUs to use; else in this process.
    skip_bad : bool
        Leave out (and log) rows whose video or image cannot be read, instead of raising; their
        number is ``meta["skipped"]``.
    resume : bool
        Continue an interrupted run of the same import (default); False starts over.

    Returns
    -------
    Manifest
        Of the written dataset; ``meta`` holds ``kind``, ``n_frames``, ``size``, ``sampling``
        ("middle"), ``jpeg_quality``, ``skipped``, ``import_key``, and ``tokenizer`` /
        ``vt_vocab_size`` / ``vt_grid`` (pretrain) or ``answer_vocab`` (oeqa); from a Parsed also
        ``source``, ``import_skipped`` and ``import_missing``.

    Raises
    ------
    ImportDataError
        An unreadable video or image (without ``skip_bad``), naming the file and its source row;
        a repeated row id.
    ValueError
        Bad arguments, or records that do not fit ``kind`` / ``n_frames``.
    """
    check_kind(kind)
    base_meta: dict[str, Any] = dict(meta or {})
    if isinstance(records, Parsed):
        base_meta.update(source=records.path, import_skipped=records.skipped, import_missing=records.missing)
    elif not isinstance(records, Sequence):
        records = list(records)  # a one-shot iterable: kept, to check it and count its answers
    cols = columns(kind, n_frames, grid)
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (pixels), got {size!r}")
    if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
    base_meta.update(kind=kind, n_frames=n_frames, size=size, sampling="middle", jpeg_quality=quality)
    if kind == "pretrain":
        if tokenizer_path is None:
            raise ValueError("kind 'pretrain' stores visual-token targets; pass tokenizer_path=<a saved diffusers "
                             "VQModel folder> (polymodal.testing.tiny.write_tiny_vqgan writes a random one for tests)")
        base_meta.update(tokenizer=tokenizer_path, vt_vocab_size=_vq_vocab_size(tokenizer_path), vt_grid=list(grid))
    index: dict[str, int] = {}
    if kind == "oeqa":
        if answers is None:
            if split != "train":
                raise ValueError(f"split {split!r}: pass answers=<the train dataset's manifest.meta['answer_vocab']> "
                                 "so every split indexes the same vocabulary (only 'train' builds its own)")
            counts = records.answers if isinstance(records, Parsed) else Counter(r.answer_text for r in records)
            answers = answer_vocab(counts.elements(), top_k)
        vocab = [normalise_answer(a) for a in answers]
        index = {a: i for i, a in enumerate(vocab)}
        base_meta["answer_vocab"] = vocab

    kwargs = {"kind": kind, "n_frames": n_frames, "size": size, "tokenizer_path": tokenizer_path, "grid": tuple(grid),
              "opts": opts.model_dump() if opts else None, "skip_bad": skip_bad, "quality": quality}
    # storage options (endpoint, credentials) are left out: new credentials read the same files
    settings = {k: v for k, v in kwargs.items() if k != "opts"}
    key = _import_key(records, {**settings, "split": split, "rows_per_shard": rows_per_shard,
                                "answers": base_meta.get("answer_vocab"), "meta": meta}, opts)
    base_meta["import_key"] = key
    tracker = ImportProgress(out_uri, key, opts, resume=resume)
    if (done := tracker.finished()) is not None:
        return done
    state = tracker.resumed()
    start, shards, unreadable = state.records, state.shards, int(state.counters.get("unreadable", 0))
    extractor: FrameExtractor | None = None
    seen: set[str] = set()
    # without Ray, batches are decoded on threads (PyAV and PIL work without the GIL), in order;
    # one thread where a VQ-GAN tokenizer runs torch, which has threads of its own
    threads = 1 if kind == "pretrain" else max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads) as pool, \
            ShardWriter(out_uri, task=TASKS[kind], split=split, columns=cols, rows_per_shard=rows_per_shard,
                        meta=base_meta, opts=opts, progress=progress, shards=shards) as writer:
        done_records = 0
        for chunk in _chunks(records, rows_per_shard):
            for r in chunk:
                _check_record(r, kind, n_frames, seen)
            done_records += len(chunk)
            if done_records <= start:
                continue  # written by the interrupted run
            items = [r.item() for r in chunk]
            for item in items:
                item["answer"] = index.get(item["answer_text"], -1) if kind == "oeqa" else item["answer"]
            before = writer.rows_written
            if use_ray:
                batches = _ray_batches(items, kwargs, batch_size, concurrency)
            else:
                extractor = extractor or FrameExtractor(**kwargs)
                batches = pool.map(extractor, _batches(items, batch_size))
            for batch in batches:
                writer.write({name: batch[name] for name in cols})
            writer.flush()
            unreadable += len(items) - (writer.rows_written - before)
            tracker.save(done_records, writer.shards, unreadable=unreadable)
        writer.meta["skipped"] = unreadable
    if unreadable:
        logger.warning("%s: %d of %d rows skipped (unreadable sources)", out_uri, unreadable, done_records)
    manifest = writer.close()
    tracker.clear()
    return manifest


def _ray_batches(items: list[dict[str, Any]], kwargs: dict[str, Any], batch_size: int,
                 concurrency: int | None) -> Iterator[dict[str, np.ndarray]]:
    import ray

    # only the tokenizer uses a GPU; decoding and JPEG encoding are CPU work
    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() and kwargs["kind"] == "pretrain" else 0
    if concurrency is None:
        cpus = int(ray.cluster_resources().get("CPU", 2)) if ray.is_initialized() else 2
        concurrency = gpus or max(1, cpus // 2)
    ds = ray.data.from_items(items)
    ds = ds.map_batches(FrameExtractor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=1 if gpus else 0, num_cpus=1)
    yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy")
