"""Entry point for ``ray job submit ... -- python jobs/evaluate.py --config C [--split test]``.

Same flags as ``polymodal evaluate``.
"""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
