"""LLaViLo's moment-retrieval task, plugged into the spine.

Metrics are the official QVHighlights moment-retrieval numbers (:func:`.metrics.evaluate`,
"full" bucket) as **fractions** in [0, 1], like every system's metrics: the official evaluator's
percentages (rounded to 2 decimals) divided by 100, so ``r1_05 == brief["MR-full-R1@0.5"] / 100``.
``r1_05`` / ``r1_07`` (R1@0.5 / R1@0.7), ``map`` (mAP averaged over IoU 0.5:0.05:0.95) and
``map_05`` (mAP@0.5). The primary metric is ``r1_05``. ``polymodal eval qvhighlights`` prints the
official percentages unchanged.

Benchmark hooks: a split imported without labels (the QVHighlights test release) gets no metrics
(:meth:`MomentRetrievalTask.has_labels`); ``polymodal evaluate`` on a QVHighlights ``val`` or
``test`` split writes the official upload files (:meth:`MomentRetrievalTask.submission_files`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polymodal import storage as st
from polymodal.cache import load_causal_lm
from polymodal.errors import PolymodalError
from polymodal.task import Batch, Task

from .config import PRESETS, LLaViLoConfig
from .data import TASK
from .spans import HungarianMatcher, set_prediction_losses, span_cxw_to_xx, span_xx_to_cxw

#: columns the model reads besides the tokenized query
_DROP = ("vid", "query")

#: metric key -> the official evaluator's ``brief`` key (a percentage; the metric is it / 100)
_OFFICIAL = {"r1_05": "MR-full-R1@0.5", "r1_07": "MR-full-R1@0.7", "map": "MR-full-mAP",
             "map_05": "MR-full-mAP@0.5"}


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: files of a save_pretrained folder that are weights (the tokenizer needs none of them)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


def load_llm(uri: str, opts=None, dtype: torch.dtype | None = None, device=None):
    """(frozen LlamaForCausalLM, tokenizer) from a ``save_pretrained`` folder (local or ``s3://``)
    or a hub id, loaded straight into ``dtype`` (default fp32) on ``device`` (default the host)
    by :func:`polymodal.cache.load_causal_lm`: meta-device init, each tensor read into place, so
    a 7B LLM meant for bf16 on a GPU never exists as an fp32 copy in host memory."""
    return load_causal_lm(uri, opts, dtype, device)


def load_model_llm(uri: str, dtype: torch.dtype | None = None, device=None, opts=None):
    """:func:`load_llm` for ``model.llm``: a missing local folder, or a hub id that cannot be had
    (offline and not cached, a typo), is a :class:`PolymodalError` naming the field and value."""
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    if not st.is_s3(uri) and (local.startswith(("/", "./", "../", "~")) or os.path.exists(local)):
        if not os.path.isdir(os.path.expanduser(local)):
            raise PolymodalError(f"model.llm: no folder at {uri!r} (a save_pretrained folder with its tokenizer, "
                                 "an s3:// folder, or a hub id such as meta-llama/Llama-2-7b-hf)")
    try:
        return load_llm(uri, opts, dtype, device)
    except OSError as exc:  # from_pretrained: not a folder, and the hub cannot give it
        raise PolymodalError(f"model.llm: {uri!r} is not a local folder, and the Hugging Face hub says: {exc}") from None


def llm_placement(cfg: LLaViLoConfig) -> tuple[torch.dtype, torch.device | None]:
    """(dtype, device) the frozen LLM is loaded to: ``model.llm_dtype`` (``auto``: bf16 when CUDA
    is available, else fp32), on the current CUDA device when there is one (Ray Train and the
    local harness set it to the worker's GPU before the model is built), else the host."""
    cuda = torch.cuda.is_available()
    name = cfg.llm_dtype if cfg.llm_dtype != "auto" else ("bf16" if cuda else "fp32")
    return _DTYPES[name], (torch.device("cuda", torch.cuda.current_device()) if cuda else None)


def load_llm_tokenizer(uri: str, opts=None):
    """The LLM's tokenizer alone: an ``s3://`` folder gives only its non-weight files (a driver
    that counts caption tokens never downloads 13 GB of weights), other URIs go to
    ``AutoTokenizer.from_pretrained`` as they are."""
    from transformers import AutoTokenizer

    if not st.is_s3(uri):
        return AutoTokenizer.from_pretrained(uri[len("file://"):] if uri.startswith("file://") else uri)
    with tempfile.TemporaryDirectory(prefix="polymodal-tok-") as tmp:
        for name in st.listdir(uri, opts):
            if not name.endswith(_WEIGHT_SUFFIXES) and not name.endswith(".index.json"):
                try:
                    data = st.read_bytes(st.join(uri, name), opts)
                except (IsADirectoryError, FileNotFoundError):
                    continue  # a sub-folder
                with open(f"{tmp}/{name}", "wb") as f:
                    f.write(data)
        return AutoTokenizer.from_pretrained(tmp)


def longest_caption(cfg, tokenizer) -> tuple[int, str]:
    """(token count, caption) of the longest caption target in the run's training data (every
    ``data.train`` source): the windows of each row as :func:`.model.format_windows` writes them,
    counted by :func:`.model.target_token_count`."""
    from .data import read_all
    from .model import format_windows, target_token_count

    captions: set[str] = set()
    for source in cfg.data.train_sources:
        rows = read_all(source.uri, cfg.storage, columns=["windows", "n_windows"])
        captions.update(format_windows(w[:int(n)]) for w, n in zip(rows["windows"], rows["n_windows"]))
    if not captions:
        return 0, ""
    return max((target_token_count(tokenizer, c), c) for c in captions)


def with_caption_budget(cfg):
    """``cfg`` with ``model.max_target_tokens`` resolved from the training data: unset, it becomes
    the longest caption's token count; set below it, the run is refused, naming that caption."""
    model = cfg.model
    if not model.use_caption and not model.parse_generation:
        return cfg  # no caption is ever tokenized
    n, caption = longest_caption(cfg, load_llm_tokenizer(model.llm, cfg.storage))
    if model.max_target_tokens is None:
        return cfg.model_copy(update={"model": model.model_copy(update={"max_target_tokens": max(n, 1)})})
    if model.max_target_tokens < n:
        raise PolymodalError(
            f"model.max_target_tokens={model.max_target_tokens} is too small for the training data: its longest "
            f"caption target, {caption!r}, is {n} tokens; set it to {n} or more, or leave it unset (then {n})")
    return cfg


def with_run_precision(cfg, local: bool):
    """``cfg`` with ``model.llm_dtype: auto`` resolved to the run's precision (``optim.precision``
    on the workers' device: bf16 on CUDA and fp32 on CPU for ``auto``), recorded with the run so
    that evaluation and serving load the LLM as it was trained."""
    from polymodal.train.deepspeed_config import resolve_precision

    if cfg.model.llm_dtype != "auto":
        return cfg
    gpu = torch.cuda.is_available() if local else cfg.scaling.use_gpu
    precision = resolve_precision(cfg.optim.precision, "cuda" if gpu else "cpu")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"llm_dtype": precision})})


def normalised_targets(batch: Batch) -> list[torch.Tensor]:
    """GT windows (B, W, 2) seconds -> B tensors (n_b, 2) of normalised (center, width)."""
    duration = batch["duration"].float().clamp_min(1e-6)
    out = []
    for b in range(len(duration)):
        xx = batch["windows"][b, :int(batch["n_windows"][b])].float() / duration[b]
        out.append(span_xx_to_cxw(xx.clamp(0.0, 1.0)))
    return out


def moment_loss(out: dict[str, Any], targets: list[torch.Tensor], cfg: LLaViLoConfig) -> dict[str, torch.Tensor]:
    """Matched set-prediction losses of the final layer plus (``aux_loss``) every aux layer,
    each layer matched on its own (DETR). Returns the weighted terms and their sum, ``loss_moment``."""
    matcher = HungarianMatcher(cfg.w_span, cfg.w_giou, cfg.w_class)
    terms: dict[str, torch.Tensor] = {}
    layers = [("", out)] + [(f"_aux{i}", aux) for i, aux in enumerate(out["aux_outputs"])]
    for suffix, layer in layers:
        layer = {k: layer[k].float() for k in ("pred_spans", "pred_logits")}
        indices = matcher(layer["pred_spans"], layer["pred_logits"], targets)
        for k, v in set_prediction_losses(layer, targets, indices, w_span=cfg.w_span, w_giou=cfg.w_giou,
                                          w_class=cfg.w_class, eos_coef=cfg.eos_coef).items():
            terms[k + suffix] = v
    terms["loss_moment"] = sum(terms.values())
    return terms


def clip_relevance(batch: Batch) -> torch.Tensor:
    """(B, Lv) float: 1 where a clip's centre lies in a GT window (clips of ``duration / n_clips`` s)."""
    n_clips = batch["n_clips"].float().clamp_min(1)
    length = batch["duration"].float() / n_clips  # (B,)
    lv = batch["video_mask"].shape[1]
    centre = (torch.arange(lv, device=length.device).float()[None] + 0.5) * length[:, None]  # (B, Lv)
    w = batch["windows"].float()  # (B, W, 2)
    real = torch.arange(w.shape[1], device=w.device)[None] < batch["n_windows"][:, None]  # (B, W)
    inside = (centre[:, :, None] >= w[:, None, :, 0]) & (centre[:, :, None] < w[:, None, :, 1]) & real[:, None]
    return inside.any(-1).float()


def saliency_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """BCE of the clip logits (B, Lv) against :func:`clip_relevance`, over real clips."""
    mask = batch["video_mask"].bool().float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), clip_relevance(batch), reduction="none")
    return (bce * mask).sum() / mask.sum().clamp_min(1)


class MomentRetrievalTask(Task):
    """Video moment retrieval (QVHighlights / Charades-STA style) with LLaViLo."""

    name = TASK
    model_config_cls = LLaViLoConfig
    presets = PRESETS
    primary_metric = "r1_05"
    mode = "max"
    #: metrics that are fractions in [0, 1] (reports print them as %)
    fraction_metrics = frozenset({*_OFFICIAL, "gen_valid", "gen_r1_05", "gen_r1_07"})

    def build_model(self, cfg: LLaViLoConfig) -> nn.Module:
        from .model import LLaViLoModel

        dtype, device = llm_placement(cfg)
        llm, tokenizer = load_model_llm(cfg.llm, dtype, device)
        return LLaViLoModel(llm, tokenizer, cfg.video_dim, cfg.text_dim, cfg)

    def fit(self, cfg, *, progress: bool = True, local: bool = False) -> dict[str, Any]:
        """The shared loop's fit, with ``model.max_target_tokens`` counted from the training data
        (:func:`with_caption_budget`) and ``model.llm_dtype`` set to the run's precision
        (:func:`with_run_precision`) before any worker starts."""
        cfg = with_run_precision(with_caption_budget(cfg), local)
        return super().fit(cfg, progress=progress, local=local)

    def tune_trial(self, cfg, manifests) -> None:
        """A Tune trial of the shared loop, with the same resolution as :meth:`fit`."""
        super().tune_trial(with_run_precision(with_caption_budget(cfg), False), manifests)

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        if "text" not in columns:
            raise ValueError("LLaViLo reads text-token features: the dataset needs `text` and `text_mask` "
                             "columns (import it with text features, see polymodal.models.llavilo.importers)")
        from .model import encode_queries

        out = {"query_bytes": torch.from_numpy(encode_queries(columns["query"]))}
        for k, v in columns.items():
            if k not in _DROP:
                out[k] = torch.from_numpy(np.require(v, requirements=["C", "W"]))
        return out

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: LLaViLoConfig = model.cfg
        out = model(batch, with_target=cfg.use_caption)
        terms = moment_loss(out, normalised_targets(batch), cfg)
        loss = cfg.moment_weight * terms["loss_moment"]
        if cfg.saliency_weight:
            terms["loss_saliency"] = sal = cfg.saliency_weight * saliency_loss(out["saliency"], batch)
            loss = loss + cfg.moment_weight * sal
        logs = {k: float(v.detach()) for k, v in terms.items()}
        if cfg.use_caption and out["caption_loss"] is not None:
            loss = loss + cfg.caption_weight * out["caption_loss"].float()
            logs["loss_caption"] = float(out["caption_loss"].detach())
        return loss, logs

    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Ranked windows per query (see :mod:`.inference`), with what the metrics need.

        Returns ``spans`` (B, J, 2) seconds, clipped to the video and snapped to its clips,
        sorted by ``scores`` (B, J) (foreground probability), best first; ``keep`` (B, J) bool
        (False: removed by NMS when ``model.nms_iou`` is set); ``saliency`` (B, Lv) clip logits
        (0 on padding) with ``n_clips``; ``qid``, ``duration``, ``windows`` (B, W, 2),
        ``n_windows``; with ``model.parse_generation`` also ``generated`` (B,) text.
        """
        from .inference import greedy_generate, snap_to_clips, temporal_nms

        net = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
        cfg: LLaViLoConfig = net.cfg
        out = model(batch, with_target=False)
        scores = out["pred_logits"].float().softmax(-1)[..., 0]  # (B, J)
        xx = span_cxw_to_xx(out["pred_spans"].float()).clamp(0.0, 1.0)  # (B, J, 2)
        duration = batch["duration"].float().cpu().numpy()
        clip_length = duration / batch["n_clips"].float().clamp_min(1).cpu().numpy()
        order = scores.argsort(dim=1, descending=True)
        scores = scores.gather(1, order).cpu().numpy()
        xx = xx.gather(1, order[..., None].expand(-1, -1, 2)).cpu().numpy()
        spans = np.stack([snap_to_clips(xx[b] * duration[b], float(duration[b]), float(clip_length[b]))
                          for b in range(len(duration))])
        keep = np.ones(scores.shape, dtype=bool)
        if cfg.nms_iou is not None:
            for b in range(len(duration)):
                keep[b] = False
                keep[b, temporal_nms(spans[b], scores[b], cfg.nms_iou)] = True
        # per-clip highlight logits (the submission's pred_saliency_scores), zeroed on padding clips
        saliency = (out["saliency"].float() * batch["video_mask"].float()).cpu().numpy()  # (B, Lv)
        result = {"spans": spans.astype(np.float32), "scores": scores, "keep": keep, "saliency": saliency,
                  "n_clips": batch["n_clips"].cpu().numpy(), "qid": batch["qid"].cpu().numpy(), "duration": duration,
                  "windows": batch["windows"].float().cpu().numpy(), "n_windows": batch["n_windows"].cpu().numpy()}
        if cfg.parse_generation:
            result["generated"] = np.asarray(greedy_generate(net, batch, cfg.max_target_tokens), dtype=object)
        return result

    def prediction_rows(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The QVHighlights submission (``polymodal evaluate`` writes ``eval/<split>_predictions.jsonl``,
        which ``polymodal eval qvhighlights --submission`` reads)."""
        return submission_rows(outputs)

    def has_labels(self, manifest) -> bool:
        """False for a split imported without ``relevant_windows`` (the QVHighlights test release)."""
        return bool(manifest.meta.get("labelled", True))

    def submission_files(self, cfg, split, predictions) -> dict[str, str] | None:
        """QVHighlights (a dataset imported by ``data import --format qvhighlights``): the
        ``standalone_eval`` upload, ``hl_<split>_submission.jsonl`` for ``val`` and ``test``
        (see :func:`qvh_submission`); evaluating ``test`` writes ``hl_val_submission.jsonl``
        beside it, since the server takes both in one zip. Other datasets: None."""
        from polymodal.shards import open_dataset

        if split not in ("val", "test"):
            return None
        manifest = open_dataset(getattr(cfg.data, split), cfg.storage)
        if manifest.meta.get("dataset") != "qvhighlights":
            return None
        files = {}
        for s in (("val", "test") if split == "test" else ("val",)):
            files[f"hl_{s}_submission.jsonl"] = "".join(
                json.dumps(r) + "\n" for r in qvh_submission(predictions(s), getattr(cfg.data, s), cfg.storage))
        return files

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Official QVHighlights MR numbers of the anchor windows as fractions (the evaluator's
        percentages / 100); with parsed generations also ``gen_valid`` (fraction of queries whose
        text holds a valid window) and ``gen_r1_05`` / ``gen_r1_07`` (R1 of the first parsed
        window; invalid text is a miss)."""
        from .metrics import evaluate

        gt = ground_truth_rows(outputs)
        brief = evaluate(submission_rows(outputs, with_generated=False), gt)["brief"]
        out = {key: brief[name] / 100.0 for key, name in _OFFICIAL.items()}
        if "generated" in outputs:
            rows = generated_rows(outputs)
            out["gen_valid"] = float(np.mean([bool(r["pred_relevant_windows"]) for r in rows]))
            # an invalid generation is submitted as an empty window at 0: never a hit
            rows = [r if r["pred_relevant_windows"] else {**r, "pred_relevant_windows": [[0.0, 0.0, 0.0]]}
                    for r in rows]
            gen = evaluate(rows, gt)["brief"]
            out["gen_r1_05"], out["gen_r1_07"] = gen["MR-full-R1@0.5"] / 100.0, gen["MR-full-R1@0.7"] / 100.0
        return out

    # -- serving (see .serving) ------------------------------------------------------------------

    def request_model(self, cfg: LLaViLoConfig):
        from .serving import MomentRequest

        return MomentRequest

    def response_model(self, cfg: LLaViLoConfig):
        from .serving import MomentResponse

        return MomentResponse

    def serve_predict(self, model: nn.Module, requests):
        from . import serving

        return serving.serve_predict(self, model, requests)

    def open_index(self, uri: str, opts=None):
        from .serving import open_index

        return open_index(uri, opts)

    def example_request(self, cfg, data_uri):
        """The first query of the split, its video named by ``vid`` (the server's index)."""
        from polymodal.shards import first_rows

        row = first_rows(data_uri, 1, cfg.storage)
        text = row["text"][0][row["text_mask"][0]].round(5).tolist()  # the real tokens, padding dropped
        return {"query": str(row["query"][0]), "text": text, "vid": str(row["vid"][0]), "top_k": 3}

    def adapter_key(self, cfg: LLaViLoConfig) -> None:
        # The frozen LLM carries this model's injection hooks, so adapters do not share it.
        return None

    def synth_overrides(self, out):
        return [*super().synth_overrides(out), f"model.llm={out['llm']}"]

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True) -> dict[str, str]:
        """Synthetic splits (see :mod:`.synth`) plus a tiny random LLaMA + tokenizer at ``<out>/llm``."""
        from .synth import write_synthetic

        out = write_synthetic(out_uri, seed=seed, scale=scale, opts=storage, progress=progress)
        out["llm"] = write_tiny_llm(st.join(out_uri, "llm"), seed=seed, opts=storage)
        return out


def submission_rows(outputs: dict[str, np.ndarray], with_generated: bool = True) -> list[dict[str, Any]]:
    """QVHighlights submission rows (anchor windows, NMS applied) from
    :meth:`MomentRetrievalTask.predict` outputs; with ``with_generated``, parsed generations
    ride along as ``generated_text`` / ``generated_windows`` (None when invalid)."""
    from .inference import parse_windows, submission_row

    keep = outputs.get("keep")
    rows = []
    for i, q in enumerate(outputs["qid"]):
        extra = None
        if with_generated and "generated" in outputs:
            text = str(outputs["generated"][i])
            extra = {"generated_text": text, "generated_windows": parse_windows(text, float(outputs["duration"][i]))}
        rows.append(submission_row(int(q), outputs["spans"][i], outputs["scores"][i],
                                   keep=None if keep is None else keep[i], extra=extra))
    return rows


def qvh_submission(outputs: dict[str, np.ndarray], data_uri: str, opts=None) -> list[dict[str, Any]]:
    """QVHighlights ``standalone_eval`` submission rows from :meth:`MomentRetrievalTask.predict`
    outputs on the dataset at ``data_uri`` (read for ``query`` and ``vid``), in the dataset's
    order: ``{"qid": int, "query": str, "vid": str, "pred_relevant_windows": [[start, end, score],
    ...] (floats, best score first), "pred_saliency_scores": [float per 2-s clip with features]}``.
    """
    from .data import read_all

    names = read_all(data_uri, opts, columns=["qid", "query", "vid"])
    by_qid = {int(q): (str(t), str(v)) for q, t, v in zip(names["qid"], names["query"], names["vid"])}
    rows = []
    for r, sal, n in zip(submission_rows(outputs, with_generated=False), outputs["saliency"], outputs["n_clips"]):
        query, vid = by_qid[r["qid"]]
        rows.append({"qid": r["qid"], "query": query, "vid": vid, "pred_relevant_windows": r["pred_relevant_windows"],
                     "pred_saliency_scores": [round(float(x), 4) for x in sal[:int(n)]]})
    return rows


def generated_rows(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Submission rows from the parsed generations alone (score 1 per window, in written order;
    an empty list where the text was invalid)."""
    from .inference import parse_windows

    rows = []
    for q, text, d in zip(outputs["qid"], outputs["generated"], outputs["duration"]):
        windows = parse_windows(str(text), float(d)) or []
        rows.append({"qid": int(q), "pred_relevant_windows": [[s, e, 1.0 - 1e-3 * k] for k, (s, e) in enumerate(windows)]})
    return rows


def ground_truth_rows(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """QVHighlights GT rows (windows only: no saliency, so no HL) from the predict outputs."""
    return [{"qid": int(q), "duration": float(d), "relevant_windows": [[float(s), float(e)] for s, e in w[:int(n)]]}
            for q, d, w, n in zip(outputs["qid"], outputs["duration"], outputs["windows"], outputs["n_windows"])]


def write_tiny_llm(out_uri: str, *, seed: int = 0, hidden: int = 64, layers: int = 3, heads: int = 4,
                   init_std: float = 0.1, opts=None) -> str:
    """A random ``LlamaForCausalLM`` (hidden 64, 3 layers) + WordPiece tokenizer
    (:func:`polymodal.testing.tiny.write_tiny_llama`) at ``out_uri``; the vocabulary covers the
    caption prompt, digits and brackets. Returns ``out_uri``.

    ``init_std`` is larger than the usual 0.02: with 0.02 the frozen ``q/k_proj`` of a 64-wide
    model give near-zero attention scores, so the anchors could only average the video prefix
    uniformly; trained LLMs have far sharper attention."""
    from polymodal.testing.tiny import write_tiny_llama

    from .config import DEFAULT_INSTRUCTION

    texts = [DEFAULT_INSTRUCTION + " query: synthetic query", "[[0, 1], [2, 3]]"]
    texts += [f"[[{i}, {i + 1}]] {i}" for i in range(0, 400)]
    with tempfile.TemporaryDirectory(prefix="polymodal-llm-") as tmp:
        write_tiny_llama(tmp, texts, seed=seed, hidden=hidden, layers=layers, heads=heads, init_std=init_std,
                         vocab_size=256)
        st.upload_dir(tmp, out_uri, opts)
    return out_uri

