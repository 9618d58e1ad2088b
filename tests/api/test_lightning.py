"""PyTorch Lightning: ``Trainer(plugins=[FastCheckpointIO()])`` with a real
``lightning`` Trainer: fit, SIGKILL, ``ckpt_path="last"`` resume with the
same loss curve; what the checkpoints are on disk; retention; pickled
hyper-parameters."""

import os
import subprocess
import sys
import textwrap

import pytest

import fastckpt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytest.importorskip("torch")
pytest.importorskip("lightning")

SCRIPT = textwrap.dedent("""
    import os, sys, time, torch, lightning as L
    from torch.utils.data import DataLoader, TensorDataset
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.io import AsyncCheckpointIO
    from fastckpt.lightning import FastCheckpointIO
    torch.manual_seed(0)
    class M(L.LightningModule):
        def __init__(self, lr=0.01, extra=None):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        def training_step(self, batch, i):
            x, y = batch
            loss = ((self.net(x) - y) ** 2).mean()
            print("loss", self.global_step, repr(loss.item()), flush=True)
            if plugin == "async":
                time.sleep(0.1)  # (time for the background saves to finish now and then)
            if os.environ.get("KILL_AT") and self.global_step == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), 9)
            return loss
        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 3)}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    dl = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16, shuffle=False)
    d, keep, plugin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    io = FastCheckpointIO() if plugin == "sync" else AsyncCheckpointIO(FastCheckpointIO())
    trainer = L.Trainer(max_epochs=4, default_root_dir=d, plugins=[io], logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=d, save_last=True, every_n_train_steps=4, save_top_k=keep)])
    trainer.fit(M(extra={(1, 2): "a tuple key fastckpt does not store natively"}), dl, ckpt_path="last")
    print("done", trainer.global_step)
""")


def _run(directory, keep=-1, kill_at=None, plugin="sync"):
    env = dict(os.environ, **({"KILL_AT": str(kill_at)} if kill_at is not None else {}))
    return subprocess.run([sys.executable, "-c", SCRIPT, str(directory), str(keep), plugin], capture_output=True,
                          text=True, env=env, timeout=600)


def _losses(out):
    return {int(s): loss for _, s, loss in (line.split() for line in out.splitlines() if line.startswith("loss "))}


@pytest.mark.deep  # 20-25 s each; the default tier runs the retention test with a real Trainer
@pytest.mark.parametrize("plugin", ["sync", "async"])
def test_fit_killed_and_resumed_from_last_has_the_same_loss_curve(tmp_path, plugin):
    """Killed (SIGKILL) at step 9, resumed with ckpt_path="last": the steps
    after the last checkpoint (step 8, an epoch's end) give the very losses of a run that
    never stopped -- model, AdamW moments, LR scheduler and loop counters
    all restored. Also with Lightning's AsyncCheckpointIO around it (which
    resumes from the last save that had finished)."""
    whole = _run(tmp_path / "whole", plugin=plugin)
    assert whole.returncode == 0, whole.stderr
    killed = _run(tmp_path / "killed", kill_at=9 if plugin == "sync" else 13, plugin=plugin)
    assert killed.returncode == -9, killed.stderr
    resumed = _run(tmp_path / "killed", plugin=plugin)
    assert resumed.returncode == 0, resumed.stderr
    assert "Restored all states" in resumed.stdout + resumed.stderr
    want, before, after = _losses(whole.stdout), _losses(killed.stdout), _losses(resumed.stdout)
    # (async: the save of step 8 may still have been queued when the process died; saves at epoch
    # ends only, since Lightning restarts an epoch's unresumable data loader from its first batch)
    assert (min(after) == 8 if plugin == "sync" else min(after) in (4, 8, 12)) and len(want) == 16
    assert {**before, **after} == want
    assert "done 16" in resumed.stdout
    assert not [n for n in os.listdir(tmp_path / "killed") if n.startswith(".fcsave")]  # the killed one's, removed


def test_checkpoints_are_bundles_in_directories_and_retention_removes_them(tmp_path):
    """Each checkpoint Lightning names is a directory holding one bundle
    (TensorFlow's format: fastckpt and TensorFlow read it); save_top_k=1
    removes the others through the plugin; nothing staged is left."""
    r = _run(tmp_path, keep=1)
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tmp_path))
    assert names == ["epoch=3-step=16.ckpt", "last.ckpt"], names
    prefix = str(tmp_path / "last.ckpt" / "checkpoint")
    tensors = dict(fastckpt.list_variables(prefix))
    assert tensors["state_dict/net.0.weight"] == [8, 4]
    assert any(n.startswith("optimizer_states/0/state/") for n in tensors)
    state = fastckpt.restore(prefix)
    assert state["global_step"] == 16 and state["epoch"] == 3
    from fastckpt.lightning import FastCheckpointIO
    loaded = FastCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")
    assert loaded["hyper_parameters"]["extra"] == {(1, 2): "a tuple key fastckpt does not store natively"}
    assert loaded["hyper_parameters"]["lr"] == 0.01 and "_fastckpt_pickled" not in loaded


def test_load_refuses_what_it_did_not_write(tmp_path):
    torch = pytest.importorskip("torch")
    from fastckpt.lightning import FastCheckpointIO
    io = FastCheckpointIO()
    torch.save({"state_dict": {}}, str(tmp_path / "plain.ckpt"))
    with pytest.raises(fastckpt.NotFoundError, match="torch.save's format"):
        io.load_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(fastckpt.NotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "empty.ckpt").mkdir()
    with pytest.raises(fastckpt.NotFoundError):
        io.load_checkpoint(tmp_path / "empty.ckpt")
    io.save_checkpoint({"w": torch.ones(2), "step": 1}, tmp_path / "a.ckpt")
    io.save_checkpoint({"w": torch.zeros(2), "step": 2}, tmp_path / "a.ckpt")  # replaced whole
    got = io.load_checkpoint(tmp_path / "a.ckpt", map_location="cpu")
    assert got["step"] == 2 and got["w"].tolist() == [0.0, 0.0]
    io.remove_checkpoint(tmp_path / "a.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["empty.ckpt", "plain.ckpt"]


def test_a_killed_saves_staged_directory_is_removed_by_the_next_save_on_its_host(tmp_path):
    import socket
    torch = pytest.importorskip("torch")
    from fastckpt.lightning import FastCheckpointIO
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = socket.gethostname()
    hexes = ["a" * 32, "b" * 32, "c" * 32]
    for name in (f".fcsave-lightning-{host}-{dead}-{hexes[0]}", f".fcsave-lightning-{host}-{os.getpid()}-{hexes[1]}",
                 f".fcsave-lightning-otherhost-{dead}-{hexes[2]}", f".fcsave-lightning-{host}-{dead}-{hexes[0]}-old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.index").write_bytes(b"partial")
    FastCheckpointIO().save_checkpoint({"w": torch.ones(2)}, tmp_path / "b.ckpt")
    assert sorted(os.listdir(tmp_path)) == sorted([f".fcsave-lightning-{host}-{os.getpid()}-{hexes[1]}",
                                                   f".fcsave-lightning-otherhost-{dead}-{hexes[2]}", "b.ckpt"])


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, lightning as L
    from torch.utils.data import DataLoader, TensorDataset
    from lightning.pytorch.callbacks import ModelCheckpoint
    from fastckpt.lightning import FastCheckpointIO
    torch.manual_seed(0)
    class M(L.LightningModule):
        def __init__(self, lr=0.01):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        def training_step(self, batch, i):
            x, y = batch
            loss = ((self.net(x) - y) ** 2).mean()
            with open(os.path.join(sys.argv[2], f"loss-{self.global_rank}.txt"), "a") as fh:
                fh.write(f"{self.global_step} {loss.item()!r}\\n")
            if os.environ.get("KILL_AT") and self.global_step == int(os.environ["KILL_AT"]) and self.global_rank == 0:
                os.killpg(0, 9)  # every rank at once (the test runs this in a session of its own)
            return loss
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
    if __name__ == "__main__":
        g = torch.Generator().manual_seed(1)
        x = torch.randn(128, 4, generator=g)
        dl = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16, shuffle=False)
        trainer = L.Trainer(max_epochs=3, default_root_dir=sys.argv[1], plugins=[FastCheckpointIO()], logger=False,
                            accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False,
                            enable_model_summary=False,
                            callbacks=[ModelCheckpoint(dirpath=sys.argv[1], save_last=True, every_n_train_steps=4,
                                                       save_top_k=-1)])
        trainer.fit(M(), dl, ckpt_path="last")
""")


@pytest.mark.deep  # three two-process DDP runs: ~45 s
def test_ddp_on_two_processes_killed_and_resumed_has_the_same_losses(tmp_path):
    """strategy="ddp" on two CPU processes (gloo): rank 0 writes through
    the plugin; both ranks SIGKILLed at step 6, the run resumed from
    ``last`` (step 4) gives every rank the losses of an uninterrupted run."""
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)  # a file: Lightning's DDP launcher runs it again for rank 1
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    logs = {name: tmp_path / name for name in ("full", "killed", "resumed")}
    for p in logs.values():
        p.mkdir()

    def run(run_dir, log, **extra):
        return subprocess.run([sys.executable, str(script), str(tmp_path / run_dir), str(log)],
                              capture_output=True, text=True, env=dict(env, **extra), timeout=600,
                              start_new_session=True)
    r = run("a", logs["full"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("b", logs["killed"], KILL_AT="6")
    assert r.returncode == -9, r.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "b")) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    r = run("b", logs["resumed"])
    assert r.returncode == 0, r.stderr[-3000:]

    def losses(log, rank):
        return [line.split() for line in (log / f"loss-{rank}.txt").read_text().splitlines()]
    for rank in (0, 1):
        full = losses(logs["full"], rank)
        assert [int(s) for s, _ in full] == list(range(12))
        resumed = losses(logs["resumed"], rank)
        assert resumed[0][0] == "4"  # from the last checkpoint, step 4
        assert resumed == full[4:], rank
        assert losses(logs["killed"], rank) == full[:len(losses(logs["killed"], rank))]
