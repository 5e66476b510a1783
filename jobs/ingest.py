"""Entry point for ``ray job submit --working-dir . -- python jobs/ingest.py SUBCOMMAND ...``.

Subcommands are those of ``polymodal data``: ``synth`` (synthetic shards with a planted
signal), ``import`` (public dataset layouts to shards) and ``inspect``. Example::

    python jobs/ingest.py synth --task wander.classification --out s3://bucket/wander
"""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", *sys.argv[1:]]))
