"""`make demo`: the whole Wander pipeline on embedded defaults.

Embedded S3 (moto on 127.0.0.1) -> synthetic shards with a planted cross-modal signal ->
2-worker Ray Train with DeepSpeed ZeRO-2 on CPU -> evaluation -> Markdown report + PNG curve.
The S3 server lives only as long as this script, so the run folder is copied to ``demo_out/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="local folder that receives the run folder copy")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic dataset size multiplier")
    args = parser.parse_args(argv)

    from polymodal import storage
    from polymodal.config import load_config
    from polymodal.evaluate import evaluate_run
    from polymodal.registry import get_task
    from polymodal.report import write_report
    from polymodal.s3server import EmbeddedS3
    from polymodal.train.loop import fit

    t0 = time.time()
    with EmbeddedS3(port=0, buckets=("polymodal",)) as s3:
        os.environ.update(s3.env())  # before ray.init, so the workers inherit the endpoint
        print(f"[demo] embedded S3 at {s3.endpoint_url}", flush=True)
        cfg = load_config(str(HERE / "configs" / "wander_tiny.yaml"),
                          [f"scaling.num_workers={args.workers}", f"optim.epochs={args.epochs}"])
        task = get_task(cfg.task)
        print("[demo] writing synthetic shards", flush=True)
        for split, uri in task.synth("s3://polymodal/demo/wander", seed=cfg.seed, scale=args.scale).items():
            print(f"[demo]   {split}: {uri}")

        import ray

        # logical CPUs: the Train controller and the workers need slots beside each other on 2 cores
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
        summary = fit(cfg)
        print(f"[demo] trained; best checkpoint {summary['best_checkpoint']}", flush=True)
        for split in ("val", "test"):
            result, uri = evaluate_run(cfg, split)
            shown = ", ".join(f"{k}={v:.3f}" for k, v in result["metrics"].items())
            print(f"[demo] {split}: {shown}")
        report_uri = write_report(cfg)
        out = Path(args.out).resolve() / cfg.name
        storage.download_dir(cfg.run_uri, str(out), cfg.storage)
        ray.shutdown()
    print(f"\n[demo] done in {time.time() - t0:.0f} s. Everything went to {cfg.run_uri} (embedded S3), copied to:")
    print(f"  report:      {out / 'report' / 'report.md'}")
    print(f"  curve:       {out / 'report' / 'curves.png'}")
    print(f"  metrics:     {out / 'logs' / 'metrics.csv'}  (TensorBoard: {out / 'logs' / 'tensorboard'})")
    print(f"  evaluation:  {out / 'eval'}")
    print(f"  checkpoints: {out}/checkpoint_*  (report source: {report_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
