"""Wander's part of ``make demo``: synthetic shards with a planted cross-modal signal -> Ray Train
with DeepSpeed ZeRO-2 on CPU -> evaluation -> Markdown report + PNG curve -> a short Ray Tune sweep
of tune_spaces/wander.yaml -> the trained run behind Ray Serve answering one real HTTP request."""

from __future__ import annotations

from pathlib import Path

from polymodal.registry import DemoStep

#: jobs/configs/ file of the step's run, read by its ``data`` and its ``run``
CONFIG = "wander_tiny.yaml"


def _sweep(demo, cfg) -> Path:
    """A short sweep of the shipped Wander space: ``demo.tune_samples`` trials of 2 epochs, 1 worker each."""
    from polymodal import storage
    from polymodal.tune import load_space, run_sweep

    space = load_space(str(demo.root / "tune_spaces" / "wander.yaml"), cfg)
    space = space.model_copy(update={
        "name": "wander-demo", "num_samples": demo.tune_samples,
        "base_overrides": [*space.base_overrides, "optim.epochs=2", "scaling.num_workers=1"]})
    demo.say(f"tune: {demo.tune_samples} trials over {', '.join(space.params)}")
    result = run_sweep(cfg, space, resume=False)
    print(storage.read_text(result.results_md, cfg.storage), flush=True)
    if result.best_trial_id:
        demo.say(f"best trial {result.best_trial_id}: {result.metric}={result.best_metric:.3f} "
                 f"with {result.best_values}")
    local = demo.out / "sweep"
    storage.download_dir(storage.join(result.sweep_uri, "results"), str(local), cfg.storage)
    return local


def _serve(demo, cfg) -> None:
    """The trained run behind serve/config.yaml: one test example over HTTP, with and without the token."""
    import httpx

    from polymodal.shards import iter_local_batches

    from .data import LABEL

    with demo.deployed("wander", checkpoint=cfg.run_uri) as (url, headers):
        row = next(iter_local_batches(cfg.data.test, 1, shuffle=False, opts=cfg.storage))
        label = int(row.pop(LABEL)[0])
        body = {"inputs": {name: values[0].tolist() for name, values in row.items()}}
        reply = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=60)
        reply.raise_for_status()
        out = reply.json()
        probs = ", ".join(f"{p:.3f}" for p in out["probabilities"])
        demo.say(f"POST {url}/v1/predict (first test example, true label {label}) -> "
                 f"{reply.status_code}: label {out['label']}, probabilities [{probs}]")
        anonymous = httpx.post(f"{url}/v1/predict", json=body, timeout=60)
        demo.say(f"the same request without the bearer token -> {anonymous.status_code}")


def run(demo) -> list[tuple[str, str]]:
    from polymodal.registry import get_task

    cfg = demo.config(CONFIG, f"scaling.num_workers={demo.workers}", f"optim.epochs={demo.epochs}")
    task = get_task(cfg.task)
    demo.say("wander: synthetic shards")
    written = demo.data_of("wander")
    for split, uri in written.items():
        demo.say(f"  {split}: {uri}")
    summary = task.fit(cfg, progress=False)
    demo.say(f"trained; best checkpoint {summary['best_checkpoint']}")
    for split in ("val", "test"):
        result, _ = task.evaluate_run(cfg, split, progress=False)
        demo.say(f"{split}: " + ", ".join(f"{k}={v:.3f}" for k, v in result["metrics"].items()))
    report_uri = task.write_report(cfg)
    out = demo.keep(cfg)
    lines = [("report", f"{out / 'report' / 'report.md'}  (source: {report_uri})"),
             ("curve", str(out / "report" / "curves.png")),
             ("metrics", f"{out / 'logs' / 'metrics.csv'}  (TensorBoard: {out / 'logs' / 'tensorboard'})"),
             ("evaluation", str(out / "eval")),
             ("checkpoints", f"{out}/checkpoint_*")]
    if demo.tune_samples > 0:
        sweep = _sweep(demo, cfg)
        lines.append(("sweep", f"{sweep / 'results.md'}  (best config: {sweep / 'best_config.yaml'}, plots: *.png)"))
    if demo.serve:
        _serve(demo, cfg)
    return lines


def data(demo) -> dict[str, str]:
    from polymodal.registry import get_task

    cfg = demo.config(CONFIG)
    return get_task(cfg.task).synth(f"{demo.data_prefix}/wander", seed=cfg.seed, scale=demo.scale, progress=False)


STEP = DemoStep("wander", "the Wander pipeline: train, evaluate, report, a short Tune sweep, serve", run, order=10,
                data=data)
