"""Entry point for ``ray job submit --working-dir . -- python jobs/deploy.py --config serve/config.yaml
[--set wander.args.checkpoint=s3://bucket/runs/wander-tiny]``.

Checks the Serve config strictly, deploys its applications on the cluster, waits until they run,
and prints their URLs. Same flags as ``polymodal deploy``.
"""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["deploy", *sys.argv[1:]]))
