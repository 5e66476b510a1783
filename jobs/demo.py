"""`make demo`: every registered system end to end, on embedded defaults.

One embedded S3 (moto on 127.0.0.1) and one local Ray cluster serve every step. Each system's step
(registered by the system itself: ``polymodal.registry.DemoStep``) writes synthetic data with a
planted signal, trains tiny models through Ray Train + DeepSpeed (or fits its closed-form model),
evaluates against chance, writes a report, and puts the trained run behind Ray Serve for one real
HTTP request and one bad one. One Serve instance, on a free port behind the demo's bearer token,
takes each step's application in turn (each is deleted before the next step starts).

The console tells the story; Ray's, Ray Data's and DeepSpeed's messages go to the log file named at
the start and at the end; ``-v`` or ``--log-level INFO`` brings them back to the console.

The S3 server lives only as long as this script, so run folders and sweep results are copied to
``demo_out/``; the closing summary lists where.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

# tiny local models only: never ask the Hugging Face hub (set before transformers is imported)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def build_parser(steps) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {s.name:<12} {s.help}" for s in steps)
    parser = argparse.ArgumentParser(description=f"{__doc__}\nSteps, in order:\n{lines}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="local folder that receives the run folder copies")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers of the main training runs")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the main training runs")
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic dataset size multiplier")
    parser.add_argument("--tune-samples", type=int, default=3, help="trials in the demo sweep (0: skip Tune)")
    parser.add_argument("--no-serve", action="store_true", help="skip the Serve deployments")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="Ray's, Ray Data's and DeepSpeed's messages on the console too (-v: INFO, -vv: DEBUG)")
    parser.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        metavar="LEVEL", help="log level of polymodal's loggers (default WARNING: the story only)")
    for step in steps:
        parser.add_argument(f"--no-{step.name}", dest=f"skip_{step.name}", action="store_true",
                            help=f"skip the {step.name} step")
    return parser


def main(argv=None) -> int:
    from polymodal.demo import Demo, one_machine_train_settings
    from polymodal.registry import registry

    steps = sorted(registry().items("demo step").values(), key=lambda s: (s.order, s.name))
    args = build_parser(steps).parse_args(argv)

    import ray

    from polymodal import logs
    from polymodal.s3server import EmbeddedS3
    from polymodal.serving import proxy

    logs.configure(logs.level_from(args.verbose, args.log_level))  # at the default level Ray's, Ray Data's and DeepSpeed's chatter goes to the log file
    t0 = time.time()
    demo = Demo(root=ROOT, out=Path(args.out).resolve(), workers=args.workers, epochs=args.epochs, scale=args.scale,
                tune_samples=args.tune_samples, serve=not args.no_serve)
    # the Serve replicas read the token from their environment, inherited from this process
    os.environ.setdefault("POLYMODAL_SERVE_TOKEN", secrets.token_urlsafe(32))
    summary: list[tuple[str, str]] = []
    with EmbeddedS3(port=0, buckets=("polymodal",)) as s3:
        os.environ.update(s3.env())  # before ray.init, so the workers inherit the endpoint
        demo.say(f"embedded S3 at {s3.endpoint_url}")
        proxy.install()  # the Serve proxies of this local cluster get polymodal's guard
        one_machine_train_settings()
        # one cluster of its own for every step ("local": never one another process started).
        # Logical CPUs: the Train controller and the workers need slots beside each other on 2
        # cores; the dashboard serves the State API, through which Train frees ASHA-stopped trials' CPUs
        logs.init_ray(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=True)
        demo.say(logs.where_logs_go())
        steps = [step for step in steps if not getattr(args, f"skip_{step.name}")]
        # every later step's data is written while the steps before it run (the first writes its own)
        demo.write_ahead(steps[1:])
        try:
            for step in steps:
                started = time.time()
                summary += step.run(demo)
                demo.say(f"{step.name} done in {time.time() - started:.0f} s")
        finally:
            if demo.serve_port is not None:  # the one Serve instance the steps deployed into
                from ray import serve

                serve.shutdown()
            ray.shutdown()
    print(f"\n[demo] done in {time.time() - t0:.0f} s. Copied from the embedded S3 to {demo.out}:")
    width = max((len(label) for label, _ in summary), default=0) + 1
    for label, where in summary:
        print(f"  {label + ':':<{width}} {where}")
    print(f"[demo] {logs.where_logs_go()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
