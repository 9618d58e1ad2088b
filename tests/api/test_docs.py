"""The documentation keeps its promises: every Python example in the README
and in docs/ runs as written (each page's blocks in order, in one namespace,
in a scratch directory), no page cites a path of this repository that does
not exist, the README stays a front page (≤ 10 KB), and the Sphinx site
builds with warnings as errors."""

import os
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from fastckpt.collective import LocalCommunicator

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]
# Paths of this repository a page may cite: they must exist.
REPO_PATH = re.compile(r"(?<![\w/.-])((?:tests|fastckpt|benchmarks|csrc|examples|docs|\.ci)/[\w./-]*\w)")


def python_blocks(page: pathlib.Path):
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


def what_examples_leave_to_the_reader(code: str):
    """The names a page's examples use without defining them."""
    ns = {"np": np, "tensors": {"w": np.ones(3, np.float32)}, "total_steps": 250, "loss": 0.5}
    if "import tensorflow" in code:
        pytest.importorskip("tensorflow")
    for needed in ("jax", "optax", "flax", "lightning", "keras"):
        if re.search(rf"\b(import|from) {needed}\b", code):
            pytest.importorskip(needed)
    if "from mpi4py import MPI" in code:  # one process, through fastckpt's own one-process communicator
        ns.update(MPI=types.SimpleNamespace(COMM_WORLD=LocalCommunicator()), emb_part=np.random.rand(1024, 64),
                  bias=np.zeros(64))
    if "torch" in code or "train_step" in code:
        torch = pytest.importorskip("torch")
        ns.update(torch_loop(torch))
    exec("import fastckpt", ns)
    return ns


def run_page(page: pathlib.Path, directory: pathlib.Path, ns=None, bucket=None):
    """Every Python block of ``page`` in order, in one namespace; a page's
    ``s3://my-bucket/`` is ``bucket`` (a fresh prefix on the test server)."""
    blocks = python_blocks(page)
    if bucket is not None:
        blocks = [b.replace("s3://my-bucket/", bucket.rstrip("/") + "/") for b in blocks]
    code_all = "\n".join(blocks)
    ns = what_examples_leave_to_the_reader(code_all) if ns is None else ns
    for code in blocks:
        code = code.replace("from mpi4py import MPI", "pass")
        exec(compile(code, str(page), "exec"), ns)
    return ns


WITH_EXAMPLES = [p for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", WITH_EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in WITH_EXAMPLES])
def test_examples_run(page, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    if re.search(r"\b(import|from) (jax|flax|optax|keras|transformers)\b", "\n".join(python_blocks(page))):
        # JAX starts threads: in this process they would make every later test's fork() unsafe
        code = (f"import sys, pathlib; sys.path.insert(0, {str(ROOT)!r})\n"
                f"from tests.api.test_docs import run_page\nrun_page(pathlib.Path({str(page)!r}), pathlib.Path('.'))\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
        if r.returncode and "Skipped" in r.stderr:
            pytest.skip(r.stderr.strip().splitlines()[-1])
        assert r.returncode == 0, r.stderr[-3000:]
        return
    bucket = request.getfixturevalue("s3_dir") if "s3://my-bucket/" in page.read_text(encoding="utf-8") else None
    run_page(page, tmp_path, bucket=bucket)


def test_every_page_with_examples_is_run():
    assert len(WITH_EXAMPLES) >= 8 and ROOT / "README.md" in WITH_EXAMPLES


def test_readme_examples_save_restore_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = ROOT / "README.md"
    pytest.importorskip("torch")
    ns = run_page(readme, tmp_path)
    assert os.path.exists(tmp_path / "my_model" / "my-model-1000.index")
    assert [os.path.basename(p) for p in ns["mgr"].checkpoints] == ["ckpt-8", "ckpt-9", "ckpt-10"]
    again = run_page(readme, tmp_path)  # a restarted job: resumes at step 10, trains no further
    assert again["mgr"].restored_step == 10 and again["state"]["step"] == 10
    assert all(np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(ns["model"].parameters(), again["model"].parameters()))


def test_training_guide_saves_on_interval_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch = pytest.importorskip("torch")
    page = ROOT / "docs" / "guides" / "training.md"
    ns = run_page(page, tmp_path)
    mgr = ns["mgr"]
    assert mgr.latest_checkpoint.endswith("ckpt-250")  # the final forced save
    assert [os.path.basename(p) for p in mgr.checkpoints] == ["ckpt-101", "ckpt-201", "ckpt-250"]
    again = {k: v for k, v in ns.items() if k not in ("state", "step", "restored", "mgr")}
    again.update(torch_loop(torch))  # a restarted job: a new model, restored from step 250
    run_page(page, tmp_path, again)
    assert again["restored"]["step"] == 250 and again["mgr"].restored_step == 250
    assert all(torch.equal(a, b) for a, b in zip(ns["model"].parameters(), again["model"].parameters()))


def test_many_processes_guide_restores_its_slice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_page(ROOT / "docs" / "guides" / "many-processes.md", tmp_path)
    assert ns["mgr"].restored_step == 100 and ns["restored"]["emb"] is ns["state"]["emb"]


def torch_loop(torch):
    """The model, optimizer and train_step the training-loop examples use."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def train_step(model, opt):
        loss = model(torch.ones(2, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return {"model": model, "opt": opt, "train_step": train_step}


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_dead_paths(page):
    text = page.read_text(encoding="utf-8")
    dead = sorted({p for p in REPO_PATH.findall(text) if not (ROOT / p.split("::")[0]).exists()})
    assert not dead, f"{page.name} cites paths that do not exist: {dead}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_dead_links(page):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8"))
    dead = sorted({t for t in links if "://" not in t and not (page.parent / t).exists()})
    assert not dead, f"{page.name} links to files that do not exist: {dead}"


def test_dead_path_check_sees_a_dead_path():
    assert REPO_PATH.findall("see `tests/api/test_nothing_here.py` and fastckpt/saving.py") == \
        ["tests/api/test_nothing_here.py", "fastckpt/saving.py"]


def test_readme_is_a_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 10 * 1024, f"README.md is {size} bytes"


@pytest.mark.no_sanitizer  # Sphinx drives no C code
def test_docs_build_with_warnings_as_errors(tmp_path):
    pytest.importorskip("sphinx", reason="the test extra installs sphinx")
    pytest.importorskip("myst_parser", reason="the test extra installs myst-parser")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                          str(ROOT / "docs"), str(tmp_path / "html")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "html" / "api.html").read_text().count("fastckpt.CheckpointManager") > 0


def test_the_zstd_chunk_size_is_the_one_documented():
    from fastckpt.bundle.writer import ZSTD_CHUNK, write_bundle

    assert ZSTD_CHUNK == 1 << 20
    assert "1 MiB chunks" in (ROOT / "docs" / "guides" / "compression.md").read_text()
    assert "chunks of 1 MiB" in write_bundle.__doc__
