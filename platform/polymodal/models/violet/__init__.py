"""VIOLET: end-to-end video-language transformer (Fu et al., 'VIOLET: End-to-End Video-Language
Transformers with Masked Visual-token Modeling').

Modules (:func:`register` adds the tasks ``violet.pretrain``, ``violet.retrieval``, ``violet.oeqa``
and ``violet.mcqa``, the import formats of ``commands``, the ``demo`` step and two Serve apps):

* ``swin``: the Video Swin Transformer visual backbone, 3D shifted-window attention over
  T x H x W patches with learnable spatial + temporal position embeddings ``p_v = p_s + p_t``;
* ``masking``: MLM (15%, 80/10/10), blockwise and attended video/text masks, BM+AM per sample;
* ``tokenizer``: the pluggable ``VisualTokenizer`` and its VQ-GAN default (a diffusers ``VQModel``),
  one code per patch position, for masked visual-token modelling;
* ``video``: sparse frame sampling, PyAV decoding, JPEG frame packing for shards;
* ``synth``: moving coloured shapes whose direction only the frame order reveals;
* ``data`` / ``importers`` / ``ingest``: shard schemas per kind (pretrain, retrieval, mcqa, oeqa);
  readers of WebVid, CC3M (img2dataset), MSR-VTT, MSRVTT-QA / MSVD-QA and TGIF-QA as released;
  PyAV decoding + JPEG packing + visual tokens by
  a Ray Data actor pool;
* ``config`` / ``model``: ``VioletConfig`` (presets ``tiny`` / ``paper``; the ablations
  ``video_encoder: swin | mean | concat``) and ``Violet``: Video Swin -> BERT width, the sequence
  ``[v + p_v, CLS, w + p_x]`` through one BERT encoder, VTM (in-batch negatives), MLM and MVM heads,
  retrieval / multiple-choice / open-ended QA scoring;
* ``task``: the spine hooks (collate of JPEG frames and text, BM+AM masking in the pre-training loss,
  the retrieval cross-encoder scored over the whole split, accuracies, synthetic splits, fine-tuning
  from a pre-trained export with ``model.init``);
* ``metrics``: the accuracies (QA ``acc``; pre-training ``vtm_acc``, ``mlm_acc``, ``mvm_acc``);
  text-to-video R@K, median and mean rank over the full N texts x V videos matrix are the spine's
  :func:`polymodal.metrics.ranking_metrics`;
* ``encode`` / ``serving``: the tokenizing, frame and cross-encoder helpers shared by the tasks and
  the Serve hooks; requests and responses of the two Serve apps;
* ``commands`` / ``demo``: the import formats and the demo step.
"""


def register(registry) -> None:
    """Entry point ``polymodal.systems: violet``."""
    from polymodal.registry import ServeApp

    from . import commands, demo, task

    for t in (task.PretrainTask(), task.RetrievalTask(), task.OpenEndedQATask(), task.MultipleChoiceQATask()):
        registry.add_task(t)
    for command in commands.import_formats():
        registry.add_import_format(command)
    registry.add_demo_step(demo.STEP)
    for app in ("violet-retrieval", "violet-qa"):
        registry.add_serve_app(ServeApp(app, "violet.yaml", "serve.violet_app:app_builder"), __name__)
