"""Benchmark: VIOLET's seeking video decoder against a full decode, on one long video.

A synthetic H.264 MP4 (``--length`` frames of ``--source-size`` px square at 25 fps, a keyframe
every ``--gop`` frames exactly; several ``--gop`` values give one file each) is sampled for T =
``--frames`` frames resized to ``--size`` px (segment middles, as ingestion samples) three ways.
Seeking decodes from the keyframe before each sampled frame, so its cost depends on where the
samples fall in their GOPs: the default 32 does not divide the sampled indices (375, 1125, 1875,
2625 of 3000), which a GOP of 25 would, and 250 is x264's default keyframe interval:

* ``seek``: ``video.sample_video``, the decoder ingestion and serving use: frame count and
  timestamps from the packets, one keyframe seek plus a short decode per sampled frame, only the
  sampled frames converted to RGB and resized;
* ``stream``: ``video.sample_video(seek=False)``, its fallback for files whose seeks cannot be
  trusted: one forward pass, only the sampled frames converted;
* ``full`` (the peer): every frame decoded to an RGB array and kept, then the T frames sampled and
  resized, which is what ``decode_frames`` did before it seeked.

Time: median seconds per call over ``--repeats`` interleaved calls in this process, after one
untimed call per method. Memory, each method in a fresh child process (``--child``), one call:

* ``RSS peak delta`` (the measure to read): the process's peak resident size during the call
  (``VmHWM``, reset through ``/proc/self/clear_refs`` just before) minus its resident size just
  before. It counts the decoded frames wherever they live: PyAV's ``to_ndarray`` returns a view
  of the frame's FFmpeg buffer, so the full decode's kept frames are FFmpeg memory;
* ``tracemalloc peak``: the most bytes Python and numpy's own allocations held at once during the
  call: the resized sampled frames and the bookkeeping (the timestamp lists), not FFmpeg's buffers.

Every method's frames are checked equal to the peer's before anything is timed.

Run: ``.venv/bin/python bench/video_decode.py [--length 3000] [--source-size 128] [--gop 32 --gop 250]
[--frames 4] [--size 224] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from polymodal.models.violet.video import _resize, encode_video, sample_indices, sample_video  # noqa: E402

METHODS = ("seek", "stream", "full")


def full_decode(path: str, n_frames: int, size: int) -> np.ndarray:
    """The peer: decode every frame to RGB and keep it, then sample and resize."""
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack([_resize(frames[i], size) for i in sample_indices(len(frames), n_frames)])


def run(method: str, path: str, n_frames: int, size: int) -> np.ndarray:
    if method == "full":
        return full_decode(path, n_frames, size)
    return sample_video(path, n_frames, size, seek=method == "seek").frames


def make_video(path: Path, length: int, side: int, gop: int) -> None:
    """A brightness ramp, a sliding square and noise: smooth enough for real P-/B-frames."""
    rng = np.random.default_rng(0)
    i, y, x = np.arange(length)[:, None, None], np.arange(side)[None, :, None], np.arange(side)[None, None, :]
    grey = (40 + (i * 3) % 160 + (x + y) // 4).astype(np.uint8)
    frames = np.repeat(grey[..., None], 3, axis=-1)
    frames[..., 0][((x - i % (side - 16)) ** 2 < 64) & ((y - side // 2) ** 2 < 64)] = 250
    frames = np.clip(frames.astype(np.int16) + rng.integers(-4, 5, frames.shape), 0, 255).astype(np.uint8)
    # sc_threshold 0: no extra keyframes at the ramp's jumps, so keyframes are exactly --gop apart
    path.write_bytes(encode_video(frames, fps=25, codec="libx264", bit_rate=2_000_000, gop=gop,
                                  options={"sc_threshold": "0"}))


def _status(field: str) -> int:
    """A ``/proc/self/status`` size in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(method: str, path: str, n_frames: int, size: int) -> dict:
    """One call in a fresh process: tracemalloc peak and peak-RSS delta, printed as JSON."""
    # load PyAV's codecs and PIL first, on another (tiny) video: a warm-up on the same file would
    # leave its freed frames in the allocator's heap, and the measured call would reuse them unseen
    warm = Path(path).with_name(f"warm-{method}.mp4")
    make_video(warm, 8, 32, 4)
    run(method, str(warm), n_frames, 8)
    before = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    tracemalloc.start()
    run(method, path, n_frames, size)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"tracemalloc_peak": peak, "rss_peak_delta": _status("VmHWM") - before if reset else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=3000, help="frames in the video (25 fps)")
    p.add_argument("--source-size", type=int, default=128, help="side of the video's frames, px")
    p.add_argument("--gop", type=int, action="append", help="frames between keyframes (repeat for several files; "
                                                            "default 32 and 250, x264's default)")
    p.add_argument("--frames", type=int, default=4, help="T, frames sampled")
    p.add_argument("--size", type=int, default=224, help="side of the sampled frames, px")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.file, args.frames, args.size)))
        return

    mib = 2 ** 20
    print(f"video: {args.length} frames of {args.source_size}x{args.source_size} (H.264, 25 fps); T = {args.frames} "
          f"frames at {args.size} px; a full decode holds {args.length * args.source_size ** 2 * 3 / mib:.1f} MiB "
          f"of RGB frames, T sampled frames {args.frames * args.size ** 2 * 3 / mib:.2f} MiB")
    print("| gop | method | frames decoded | s per call (median) | time / full | RSS peak delta MiB | "
          "tracemalloc peak MiB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="video-bench-") as tmp:
        for gop in args.gop or [32, 250]:
            path = Path(tmp) / f"long_gop{gop}.mp4"
            make_video(path, args.length, args.source_size, gop)
            ref = full_decode(str(path), args.frames, args.size)
            decoded = {"full": args.length}
            for method in ("seek", "stream"):
                got = sample_video(str(path), args.frames, args.size, seek=method == "seek")
                if not np.array_equal(got.frames, ref):
                    raise SystemExit(f"{method}: frames differ from the full decode's")
                decoded[method] = got.n_decoded
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for _ in range(args.repeats):
                for method in METHODS:
                    t0 = time.perf_counter()
                    run(method, str(path), args.frames, args.size)
                    times[method].append(time.perf_counter() - t0)
            med = {m: statistics.median(v) for m, v in times.items()}
            for method in METHODS:
                out = subprocess.run([sys.executable, __file__, "--child", method, "--file", str(path),
                                      "--frames", str(args.frames), "--size", str(args.size)],
                                     check=True, capture_output=True, text=True, env={**os.environ})
                mem = json.loads(out.stdout.strip().splitlines()[-1])
                rss = mem["rss_peak_delta"]
                print(f"| {gop} | {method} | {decoded[method]} | {med[method]:.3f} | {med[method] / med['full']:.3f} | "
                      f"{'n/a' if rss is None else f'{rss / mib:.1f}'} | {mem['tracemalloc_peak'] / mib:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
