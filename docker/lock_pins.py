"""Turn a pip lock (``requirements.lock``, pip-tools or ``uv pip compile`` output) or
``constraints.txt`` into the plain pins the image build resolves against.

Usage: ``python lock_pins.py LOCK > pins.txt`` (used by ``wheelhouse.sh`` in the image build).

The image installs torch from the PyTorch index of its target (CPU or CUDA build), so the
lock's torch, triton and ``nvidia-*`` pins are dropped: a lock made on a CPU machine pins
``torch==X+cpu``, which the CUDA build must replace. Everything else keeps its exact pin and
environment marker; hashes, index options and editable/local lines are dropped (the wheels are
built once in the build stage and installed from that folder).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator

#: distributions that come with the target's torch build, never from the lock
TORCH_FAMILY = re.compile(r"^(torch|triton|pytorch-triton(-\w+)?|nvidia-[\w-]+)$")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _logical_lines(lines: Iterable[str]) -> Iterator[str]:
    """Lines with backslash continuations joined and comments removed."""
    buf = ""
    for raw in lines:
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield buf.strip()
        buf = ""
    if buf.strip():
        yield buf.strip()


def pins(lines: Iterable[str], *, own: str = "polymodal") -> list[str]:
    """The requirement lines of a lock as plain pins, without the torch family, hashes, options
    (``-e``, ``--index-url``, ...) and ``own`` (the package being built)."""
    out = []
    for line in _logical_lines(lines):
        if line.startswith(("-", ".", "/")):
            continue  # options, editable installs, local paths
        match = _NAME.match(line)
        if not match:
            continue
        name = _normalize(match.group(1))
        if name == own or TORCH_FAMILY.match(name):
            continue
        out.append(re.sub(r"\s+--hash[=\s]\S+", "", line).strip())
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python lock_pins.py LOCK > pins.txt", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        print("\n".join(pins(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
