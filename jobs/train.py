"""Entry point for ``ray job submit --working-dir . -- python jobs/train.py --config C [--set k=v]``.

Same flags as ``polymodal train``; exits non-zero with a one-line reason on failure.
"""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
