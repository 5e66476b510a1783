"""Entry point for ``ray job submit --working-dir . -- python jobs/tune.py --config C --space S``.

Same flags as ``polymodal tune``; rerunning it resumes the sweep; exits non-zero with a
one-line reason on failure.
"""

import sys

from polymodal.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
