"""The other libraries ``fastckpt bench`` times beside fastckpt, each only
when installed, each imported with its log output silenced: TensorFlow
(``SaveV2``, ``load_checkpoint``, ``RestoreV2``), safetensors, ``torch.save``
/ ``torch.load``, torch distributed checkpoint (``dcp.save`` / ``dcp.load``
into existing tensors) and Orbax (``StandardCheckpointer`` on JAX's CPU).

A peer is a list of cases: ``(name, kind, run, before, reads)`` where
``kind`` is ``save``, ``into`` (restore into existing buffers) or ``fresh``
(restore into new memory), ``before`` runs untimed first, ``reads`` names
what a restore reads (for cold runs)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["PeerCase", "peer_cases", "quiet", "PEER_COPIES"]

PeerCase = Tuple[str, str, Callable[[], object], Optional[Callable[[], None]], str]

# Extra copies of the state a peer adds to the run's peak (for the memory estimate, measured):
# TensorFlow's constants, kept all along; Orbax's save buffers; torch's and DCP's views cost nothing.
PEER_COPIES = {"TensorFlow": 1.25, "Orbax": 1.5}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what native libraries print on file descriptors 1 and 2
    while importing or first running (TensorFlow's and absl's "WARNING: All
    log messages before absl::InitializeLog()", oneDNN notices), and
    Python warnings and log records below ERROR."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    saved = []
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        null = -1
    try:
        for fd in (1, 2):
            try:
                os.fsync(fd)
            except OSError:
                pass
            if null >= 0:
                saved.append((fd, os.dup(fd)))
                os.dup2(null, fd)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                yield
            finally:
                logging.disable(previous)
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        if null >= 0:
            os.close(null)


def _remover(*paths: str) -> Callable[[], None]:
    def remove() -> None:
        for p in paths:
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.unlink(p)
    return remove


def _import(name: str) -> Any:
    try:
        with quiet():
            return __import__(name, fromlist=["_"])
    except Exception:
        return None


def peer_cases(work: str, state: Dict[str, np.ndarray], existing: Dict[str, np.ndarray],
               notes: List[str]) -> List[PeerCase]:
    """Every installed peer's cases (a note for each one that is not)."""
    cases: List[PeerCase] = []
    for add in (_tensorflow, _safetensors, _torch_file, _torch_dcp, _orbax):
        got = add(work, state, existing)
        if isinstance(got, str):
            notes.append(got)
        else:
            cases += got
    return cases


def _tensorflow(work: str, state: Dict[str, np.ndarray], existing: Dict[str, np.ndarray]) -> Any:
    tf = _import("tensorflow")
    if tf is None:
        return "TensorFlow not installed: its rows are skipped"
    tfp = os.path.join(work, "tf", "ckpt")
    os.makedirs(os.path.dirname(tfp), exist_ok=True)
    names = list(state)
    with quiet():
        tensors = [tf.constant(v) for v in state.values()]
        dtypes = [tf.as_dtype(v.dtype) for v in state.values()]

    def save() -> None:
        with quiet():
            tf.raw_ops.SaveV2(prefix=tfp, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)

    def fresh() -> None:
        with quiet():
            r = tf.train.load_checkpoint(tfp)
            _ = [r.get_tensor(k) for k in state]  # (all kept until the end, as a restore keeps them)

    def restore_v2() -> None:
        with quiet():
            _ = [t.numpy() for t in tf.raw_ops.RestoreV2(prefix=tfp, tensor_names=names,
                                                         shape_and_slices=[""] * len(names), dtypes=dtypes)]
    d = os.path.dirname(tfp)

    def fresh_directory() -> None:
        _remover(d)()
        os.makedirs(d)
    return [("TensorFlow SaveV2", "save", save, fresh_directory, ""),
            ("TensorFlow load_checkpoint", "fresh", fresh, None, d),
            ("TensorFlow RestoreV2", "fresh", restore_v2, None, d)]


def _safetensors(work: str, state: Dict[str, np.ndarray], existing: Dict[str, np.ndarray]) -> Any:
    sf = _import("safetensors.numpy")
    if sf is None:
        return "safetensors not installed: its rows are skipped"
    p = os.path.join(work, "model.safetensors")
    return [("safetensors save_file", "save", lambda: sf.save_file(state, p), _remover(p), ""),
            ("safetensors load_file", "fresh", lambda: sf.load_file(p), None, p)]


def _torch_tensors(torch: Any, arrays: Dict[str, np.ndarray]) -> Optional[Dict[str, Any]]:
    try:
        return {k: torch.from_numpy(v) for k, v in arrays.items()}
    except TypeError:  # a dtype torch has no numpy bridge for (bfloat16...)
        return None


def _torch_file(work: str, state: Dict[str, np.ndarray], existing: Dict[str, np.ndarray]) -> Any:
    torch = _import("torch")
    if torch is None:
        return "PyTorch not installed: torch.save/torch.load rows are skipped"
    tensors = _torch_tensors(torch, state)
    if tensors is None:
        return "torch.save/torch.load: this dtype has no torch.from_numpy: rows skipped"
    p = os.path.join(work, "model.pt")
    return [("torch.save", "save", lambda: torch.save(tensors, p), _remover(p), ""),
            ("torch.load", "fresh", lambda: torch.load(p, weights_only=True), None, p)]


def _torch_dcp(work: str, state: Dict[str, np.ndarray], existing: Dict[str, np.ndarray]) -> Any:
    dcp = _import("torch.distributed.checkpoint")
    torch = _import("torch")
    if dcp is None or torch is None:
        return "torch.distributed.checkpoint not installed: its rows are skipped"
    tensors, into = _torch_tensors(torch, state), _torch_tensors(torch, existing)
    if tensors is None or into is None:
        return "torch DCP: this dtype has no torch.from_numpy: rows skipped"
    d = os.path.join(work, "dcp")

    def save() -> None:
        with quiet():
            dcp.save(tensors, checkpoint_id=d, no_dist=True)

    def load() -> None:
        with quiet():
            dcp.load(into, checkpoint_id=d, no_dist=True)
    return [("torch DCP save", "save", save, _remover(d), ""),
            ("torch DCP load (into existing)", "into", load, None, d)]


def _orbax(work: str, state: Dict[str, np.ndarray], existing: Dict[str, np.ndarray]) -> Any:
    ocp = _import("orbax.checkpoint")
    if ocp is None:
        return "Orbax (orbax-checkpoint) not installed: its rows are skipped"
    d = os.path.join(work, "orbax")
    with quiet():
        checkpointer = ocp.StandardCheckpointer()

    def save() -> None:
        with quiet():
            checkpointer.save(d, state)
            checkpointer.wait_until_finished()

    def restore() -> None:
        with quiet():
            checkpointer.restore(d)
    return [("Orbax StandardCheckpointer save", "save", save, _remover(d), ""),
            ("Orbax StandardCheckpointer restore", "fresh", restore, None, d)]
