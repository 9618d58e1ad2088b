"""The ``fastckpt`` command: ``bench``, ``verify``, ``ls``, ``gc``."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .errors import CheckpointError, InvalidArgumentError, NotFoundError

__all__ = ["main"]


def _bench(args: argparse.Namespace) -> int:
    from .bench import parse_size, run_async_bench, run_bench  # only the bench's own process loads it

    if args.async_save:
        run_async_bench(size=parse_size(args.size), tensors=args.tensors, dtype=args.dtype, rounds=args.rounds,
                        directory=args.dir)
        return 0
    run_bench(size=parse_size(args.size), tensors=args.tensors, dtype=args.dtype, durable=args.durable,
              cold=args.cold, rounds=args.rounds, directory=args.dir, threads=args.threads,
              skip_others=args.only_fastckpt, layout=args.layout)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from .reader import load_checkpoint

    with load_checkpoint(args.path) as r:
        dtypes = r.get_variable_to_dtype_map()
        print(f"{r.prefix}: {len(r)} tensors in {r.num_shards} data file(s)")
        for name, shape in sorted(r.get_variable_to_shape_map().items()):
            print(f"  {name}  {dtypes[name]}  {shape}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify_path

    reports = verify_path(args.path, threads=args.threads)
    for r in reports:
        if not (args.quiet and r.ok):
            print(r.summary())
    bad = sum(not r.ok for r in reports)
    print(f"{len(reports) - bad} of {len(reports)} checkpoint(s) OK" + (f", {bad} DAMAGED" if bad else ""))
    return 1 if bad else 0


def _gc(args: argparse.Namespace) -> int:
    import os

    from .commit import collect_garbage
    from .errors import NotFoundError

    if not os.path.isdir(args.directory):
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastckpt`` command."""
    p = argparse.ArgumentParser(prog="fastckpt", description="TensorFlow-format checkpoints, fast.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="save/restore throughput vs the raw disk, TensorFlow and safetensors")
    b.add_argument("--size", default="1GiB", help="total bytes of the state (default 1GiB)")
    b.add_argument("--tensors", type=int, default=250, help="number of tensors (default 250)")
    b.add_argument("--dtype", default="float32", help="float32, bfloat16, float16, ... (default float32)")
    b.add_argument("--layout", choices=["gpt", "uniform"], default="gpt",
                   help="gpt: GPT-shaped tensors; uniform: equal 1-D tensors (--size 100MB --tensors 100000)")
    b.add_argument("--durable", action="store_true", help="fsync (raw write and fastckpt save)")
    b.add_argument("--cold", action="store_true", help="restores read from disk: files are evicted from the page cache first")
    b.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are quoted (default 5)")
    b.add_argument("--dir", default=None, help="directory for the files (default: the system temp dir)")
    b.add_argument("--threads", type=int, default=None, help="fastckpt threads (default: all cores)")
    b.add_argument("--async", dest="async_save", action="store_true",
                   help="measure CheckpointManager.save(blocking=False): time the caller is blocked vs a memory copy")
    b.add_argument("--only-fastckpt", action="store_true", help="skip TensorFlow and safetensors")
    b.set_defaults(func=_bench)
    v = sub.add_parser("verify", help="check a checkpoint (or every one a directory's state file lists) "
                                      "completely; exits 1 on any damage")
    v.add_argument("path", help="a checkpoint prefix or a directory with a state file")
    v.add_argument("--quiet", action="store_true", help="print only damaged checkpoints and the total")
    v.add_argument("--threads", type=int, default=None)
    v.set_defaults(func=_verify)
    g = sub.add_parser("gc", help="finish commits and remove files that killed saves left in a checkpoint "
                                  "directory (what the next save does first); report unlisted checkpoints")
    g.add_argument("directory", help="a checkpoint directory")
    g.add_argument("--dry-run", action="store_true", help="only report")
    g.set_defaults(func=_gc)
    ls = sub.add_parser("ls", help="list the tensors of a checkpoint (prefix or directory)")
    ls.add_argument("path")
    ls.set_defaults(func=_ls)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastckpt`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (NotFoundError, InvalidArgumentError) as e:
        print(f"fastckpt: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"fastckpt: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"fastckpt: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
