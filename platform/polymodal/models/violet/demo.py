"""VIOLET's part of ``make demo``: synthetic moving shapes asked "which way does the <colour> <shape>
move?" (four answers, chance 25 %) -> tiny VIOLET trained from scratch through Ray Train + DeepSpeed
(jobs/configs/violet_tiny_qa.yaml) -> test accuracy -> the `violet-qa` application of
serve/violet.yaml, asked about one test video by `vid`.

Trained from scratch: pre-training first (VTM + MLM + MVM) is the slow test's job
(tests/violet/test_violet_learning.py) and would double the time of this part.
"""

from __future__ import annotations

from polymodal.registry import DemoStep

#: jobs/configs/ file of the step's run, read by its ``data`` and its ``run``
CONFIG = "violet_tiny_qa.yaml"


def _serve(demo, cfg) -> None:
    import httpx

    from polymodal import shards

    # the index is the test split: requests name its videos by `vid`, and its manifest holds the
    # answer vocabulary, which the checkpoint does not carry
    with demo.deployed("violet-qa", checkpoint=cfg.run_uri, index=cfg.data.test) as (url, headers):
        row = next(shards.iter_local_batches(cfg.data.test, 1, shuffle=False, opts=cfg.storage))
        body = {"question": str(row["text"][0]), "vid": str(row["video"][0])}
        reply = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=120)
        reply.raise_for_status()
        answer = reply.json()
        demo.say(f"  POST {url}/v1/predict ({body['question']!r}, vid {body['vid']}) -> "
                 f"{reply.status_code}: {answer['answer']!r} with prob {answer['prob']:.2f} "
                 f"(true direction {str(row['answer_text'][0])!r})")
        bad = httpx.post(f"{url}/v1/predict", json={**body, "vid": "no-such-video"}, headers=headers, timeout=60)
        demo.say(f"  unknown vid -> {bad.status_code}: {bad.json()['detail']}")


def run(demo) -> list[tuple[str, str]]:
    cfg, task = demo.synthesized("violet", CONFIG,
                                 "violet: 1024/256/256 synthetic clips of a moving shape, 'which way does it move?' "
                                 "(no pre-training in the demo)")
    result, local = demo.fit_and_report(task, cfg)
    demo.say(f"  test accuracy {100 * result['metrics']['acc']:.1f} % (chance 25 %; a model blind to frame order "
             "tops out at 50 %)")
    if demo.serve:
        _serve(demo, cfg)
    return [("VIOLET", f"{local / 'report' / 'report.md'}  (evaluation: {local / 'eval'})")]


def data(demo) -> dict[str, str]:
    return demo.synthesize(CONFIG, "violet/oeqa")


STEP = DemoStep("violet", "VIOLET video QA: train from scratch, evaluate, serve", run, order=50, data=data)
