"""ChefFusion's part of ``make demo``: synthetic coloured-shape dishes with matching recipes, tiny
backbones (a small OPT trained on the recipes, a random CLIP and Stable Diffusion) -> CLIP / SD
text-encoder features by a Ray Data actor pool -> W_recipe, the [IMG] tokens and the mapper trained
through Ray Train + DeepSpeed (jobs/configs/cheffusion_tiny.yaml) -> BLEU / ROUGE-2 / CLIP
similarity and the validation losses before and after -> a report with a grid of generated images
-> the model behind Ray Serve (serve/cheffusion.yaml): a recipe in, a PNG out; an image in, a
recipe out."""

from __future__ import annotations

from polymodal.registry import DemoStep

#: jobs/configs/ file of the step's run, read by its ``data`` and its ``run``
CONFIG = "cheffusion_tiny.yaml"


def _serve(demo, cfg, local) -> None:
    import base64

    import httpx

    from polymodal import shards

    with demo.deployed("cheffusion", checkpoint=cfg.run_uri) as (url, headers):
        row = next(shards.iter_local_batches(cfg.data.test, 1, shuffle=False, opts=cfg.storage))
        reply = httpx.post(f"{url}/v1/predict", json={"recipe": str(row["recipe"][0])},
                           headers={**headers, "accept": "image/png"}, timeout=120)
        reply.raise_for_status()
        (local / "served.png").write_bytes(reply.content)
        demo.say(f"  POST {url}/v1/predict (a recipe, Accept: image/png) -> {reply.status_code}, "
                 f"{len(reply.content)} bytes of PNG -> {local / 'served.png'}")
        image = base64.b64encode(bytes(row["image"][0])).decode()
        reply = httpx.post(f"{url}/v1/predict", json={"image": image}, headers=headers, timeout=120)
        reply.raise_for_status()
        demo.say(f"  POST an image -> {reply.json()['text'][:100]!r}... (reference: "
                 f"{str(row['recipe'][0])[:60]!r}...)")
        bad = httpx.post(f"{url}/v1/predict", json={"image": base64.b64encode(b"not an image").decode()},
                         headers=headers, timeout=60)
        demo.say(f"  an undecodable image -> {bad.status_code}: {bad.json()['detail']}")


def run(demo) -> list[tuple[str, str]]:
    import numpy as np

    from polymodal import shards

    cfg, task = demo.synthesized("cheffusion", CONFIG,
                                 "cheffusion: 480/96/96 synthetic dishes, tiny OPT + CLIP + Stable Diffusion")
    batches = shards.iter_local_batches(cfg.data.test, 48, shuffle=False, shuffle_buffer=0, opts=cfg.storage)
    model = task.build_model(cfg.model).eval()
    outs = [task.predict(model, task.collate(b)) for b in batches]
    before = task.metrics({k: np.concatenate([o[k] for o in outs]) for k in outs[0]})
    result, local = demo.fit_and_report(task, cfg)
    keys = ("bleu", "rouge2", "clip_sim", "l_r", "l_p", "l_g")
    demo.say("  test before -> after training: " + ", ".join(
        f"{k} {before[k]:.3f} -> {result['metrics'][k]:.3f}" for k in keys))
    if demo.serve:
        _serve(demo, cfg, local)
    return [("ChefFusion", f"{local / 'report' / 'report.md'}  (image grid: {local / 'report' / 'generations.png'})")]


def data(demo) -> dict[str, str]:
    return demo.synthesize(CONFIG, "cheffusion")


STEP = DemoStep("cheffusion", "ChefFusion recipes and food images: features, train, evaluate, report, serve", run,
                order=40, data=data)
