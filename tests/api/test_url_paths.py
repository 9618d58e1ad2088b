"""URLs of stores fastckpt does not reach (``gs://``, ``hdfs://``...) are
refused by every API and command, before anything is read or written (no
``./gs:/bucket/...`` directory appears), with one clear line; ``file://``
URLs work as local paths. (``s3://`` URLs work: tests/api/test_s3_checkpoints.py.)"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastckpt

URLS = ["gs://bucket/run", "hdfs://namenode/x", "az://c/x", "HTTP://host/x", "s3a://bucket/x"]
STATE = {"w": np.arange(6, dtype=np.float32)}


def _calls(url, local):
    """Every public function that takes a path, with ``url`` in each path slot."""
    return {
        "save": lambda: fastckpt.save(STATE, url),
        "save(template=)": lambda: fastckpt.save(STATE, local + "/t", template=url),
        "restore": lambda: fastckpt.restore(url),
        "Saver.save": lambda: fastckpt.Saver().save(STATE, url, global_step=1),
        "Saver.restore": lambda: fastckpt.Saver().restore(url),
        "CheckpointManager": lambda: fastckpt.CheckpointManager(url),
        "write_bundle": lambda: fastckpt.write_bundle(url, STATE),
        "read_bundle": lambda: fastckpt.read_bundle(url),
        "load_checkpoint": lambda: fastckpt.load_checkpoint(url),
        "CheckpointReader": lambda: fastckpt.CheckpointReader(url),
        "list_variables": lambda: fastckpt.list_variables(url),
        "read_meta": lambda: fastckpt.read_meta(url),
        "get_checkpoint_state": lambda: fastckpt.get_checkpoint_state(url),
        "latest_checkpoint": lambda: fastckpt.latest_checkpoint(url),
        "update_checkpoint_state": lambda: fastckpt.update_checkpoint_state(url, "ckpt-1"),
        "verify_checkpoint": lambda: fastckpt.verify_checkpoint(url),
        "verify_path": lambda: fastckpt.verify_path(url),
        "collect_garbage": lambda: fastckpt.collect_garbage(url),
        "convert from": lambda: fastckpt.convert(url, local + "/m.safetensors"),
        "convert to": lambda: fastckpt.convert(local + "/src", url + ".safetensors"),
        "diff": lambda: fastckpt.diff(url, local + "/src"),
        "diff b": lambda: fastckpt.diff(local + "/src", url),
        "inspect_checkpoint": lambda: fastckpt.inspect_checkpoint(url),
    }


@pytest.mark.parametrize("url", URLS)
def test_every_api_refuses_an_unsupported_url(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    fastckpt.save(STATE, str(tmp_path / "src"))
    before = sorted(os.listdir(tmp_path))
    for name, call in _calls(url, str(tmp_path)).items():
        with pytest.raises(fastckpt.InvalidArgumentError, match="is a URL .*local paths") as e:
            call()
        assert "\n" not in str(e.value), name
    assert sorted(os.listdir(tmp_path)) == before  # no ./s3:/ directory, nothing written


COMMANDS = [["ls", "{u}"], ["verify", "{u}"], ["inspect", "{u}"], ["gc", "{u}"], ["diff", "{u}", "{src}"],
            ["diff", "{src}", "{u}"], ["convert", "{u}", "out.safetensors"], ["convert", "{src}", "{u}.safetensors"],
            ["convert", "{src}", "{u}"], ["bench", "--quick", "--only-fastckpt", "--dir", "{u}"]]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_every_command_refuses_an_unsupported_url(tmp_path, argv):
    fastckpt.save(STATE, str(tmp_path / "src"))
    before = sorted(os.listdir(tmp_path))
    args = [a.format(u="gs://my-bucket/run/m", src=str(tmp_path / "src")) for a in argv]
    r = subprocess.run([sys.executable, "-m", "fastckpt"] + args, capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a URL (gs://)" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "wrote" not in r.stdout
    assert sorted(os.listdir(tmp_path)) == before


def test_file_urls_are_local_paths(tmp_path):
    url = "file://" + str(tmp_path / "a dir").replace(" ", "%20")
    fastckpt.save(STATE, url + "/m")
    assert os.path.exists(tmp_path / "a dir" / "m.index")
    np.testing.assert_array_equal(fastckpt.restore(url + "/m")["w"], STATE["w"])
    mgr = fastckpt.CheckpointManager("file://localhost" + str(tmp_path / "run"), max_to_keep=2)
    mgr.save(STATE, 3)
    assert fastckpt.latest_checkpoint("file://" + str(tmp_path / "run")) == str(tmp_path / "run" / "ckpt-3")
    fastckpt.convert(url + "/m", "file://" + str(tmp_path / "m.safetensors"))
    assert os.path.exists(tmp_path / "m.safetensors")
    with pytest.raises(fastckpt.InvalidArgumentError, match="file:///path"):
        fastckpt.restore("file://otherhost/x")
