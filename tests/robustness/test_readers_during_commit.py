"""What readers in another process see while saves commit: re-saves of the
same steps, new steps (half of them in the background), recycling saves,
and saves from several ranks. fastckpt's own readers never see a staged
name, never None while a committed checkpoint exists, never an error and
never values no save wrote; TensorFlow's view of the state file (its
parser ignores fastckpt's comments) never names a staged bundle while a
new step commits."""

import os

import pytest

from tests.helpers import crash_child
from tests.helpers.races import resave_beside, result_of

pytestmark = pytest.mark.no_sanitizer  # runs its own processes; slow under ASan


def _watch(ctx, tmp_path, run):
    d = tmp_path / "run"
    d.mkdir()
    stop, result = str(tmp_path / "stop"), str(tmp_path / "result")
    watcher = ctx.Process(target=crash_child.watch_commits_until, args=(str(d), stop, result))
    watcher.start()
    try:
        run(str(d))
    finally:
        open(stop, "w").close()
        watcher.join()
    assert watcher.exitcode == 0
    head, *errors = open(result).read().split("\n")
    good, bad, foreign = map(int, head.split())
    return good, bad, foreign, errors


@pytest.mark.parametrize("mode", ["plain", "recycle", "ranks"])
def test_readers_while_new_steps_commit(tmp_path, ctx, counts, mode):
    def run(d):
        p = ctx.Process(target=crash_child.save_new_steps, args=(d, 150, mode))
        p.start()
        p.join()
        assert p.exitcode == 0
    good, bad, foreign, errors = _watch(ctx, tmp_path, run)
    assert bad == 0, errors
    assert foreign == 0, f"TensorFlow's parser saw a staged name {foreign} times while new steps committed"
    assert good > 5, good
    counts[f"reads while new steps committed ({mode})"] = good


def test_readers_while_steps_are_resaved(tmp_path, ctx, counts):
    d = tmp_path / "run"
    d.mkdir()
    stop, result = str(tmp_path / "stop"), str(tmp_path / "result")
    resave_beside(ctx, str(d), stop, [(crash_child.watch_commits_until, (str(d), stop, result))], steps=15)
    head, *errors = open(result).read().split("\n")
    good, bad, foreign = map(int, head.split())
    assert bad == 0, errors
    assert good > 5, good
    counts["reads while steps were re-saved"] = good
    counts["state files naming a staged bundle to TensorFlow while re-saving (the replace window)"] = foreign
