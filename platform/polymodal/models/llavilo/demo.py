"""LLaViLo's part of ``make demo``: synthetic moment-retrieval queries with a planted query direction
in the ground-truth windows and a tiny random LLaMA -> the video adapter + gated injection + moment
head trained through Ray Train + DeepSpeed (jobs/configs/llavilo_tiny.yaml) -> R1/mAP on the test
split against random windows -> the model behind Ray Serve (serve/llavilo.yaml), asked by `vid`."""

from __future__ import annotations

from polymodal.registry import DemoStep

#: jobs/configs/ file of the step's run, read by its ``data`` and its ``run``
CONFIG = "llavilo_tiny.yaml"


def _serve(demo, cfg, rows) -> None:
    import httpx

    with demo.deployed("llavilo", checkpoint=cfg.run_uri, index=cfg.data.test) as (url, headers):
        text = rows["text"][0][rows["text_mask"][0]].round(5).tolist()
        body = {"query": str(rows["query"][0]), "text": text, "vid": str(rows["vid"][0]), "top_k": 3}
        reply = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=60)
        reply.raise_for_status()
        truth = rows["windows"][0, :int(rows["n_windows"][0])].tolist()
        demo.say(f"  POST {url}/v1/predict (vid {body['vid']}) -> {reply.status_code}: "
                 f"{reply.json()['pred_relevant_windows']} (ground truth {truth})")
        bad = httpx.post(f"{url}/v1/predict", json={**body, "text": [[0.0] * 7]}, headers=headers, timeout=60)
        demo.say(f"  wrong feature width -> {bad.status_code}: {bad.json()['detail']}")


def run(demo) -> list[tuple[str, str]]:
    from . import metrics, synth
    from .data import read_all

    cfg, task = demo.synthesized("llavilo", CONFIG,
                                 "llavilo: 512/128/128 synthetic queries over 32-clip videos, a tiny random LLaMA")
    result, local = demo.fit_and_report(task, cfg)
    rows = read_all(cfg.data.test, cfg.storage)
    # the official evaluator's numbers are percentages; the task's metrics are fractions
    chance = metrics.evaluate(synth.random_windows(rows, seed=0), synth.qvh_ground_truth(rows))["brief"]
    m = result["metrics"]
    demo.say(f"  test R1@0.5 {100 * m['r1_05']:.1f} %, R1@0.7 {100 * m['r1_07']:.1f} %, mAP {100 * m['map']:.1f} % "
             f"(random windows: R1@0.5 {chance['MR-full-R1@0.5']:.1f} %, mAP {chance['MR-full-mAP']:.1f} %)")
    if demo.serve:
        _serve(demo, cfg, rows)
    return [("LLaViLo", f"{local / 'report' / 'report.md'}  (evaluation: {local / 'eval'})")]


def data(demo) -> dict[str, str]:
    return demo.synthesize(CONFIG, "llavilo")


STEP = DemoStep("llavilo", "LLaViLo moment retrieval: train, evaluate against random windows, serve", run,
                order=30, data=data)
