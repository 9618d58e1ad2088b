"""Two processes re-save the same steps into one directory while a third
restores the latest checkpoint in a loop: no restore fails or returns data
no save wrote, and nothing is left behind."""

import os

import pytest

import fastckpt
from tests.helpers import crash_child
from fastckpt.locking import is_leftover

pytestmark = pytest.mark.no_sanitizer  # runs its own processes and preloads; slow under ASan


def test_two_resavers_and_a_reader(tmp_path, ctx, counts):
    d = tmp_path / "run"
    d.mkdir()
    stop, result = str(tmp_path / "stop"), str(tmp_path / "result")
    reader = ctx.Process(target=crash_child.restore_latest_until, args=(str(d), stop, result))
    reader.start()
    savers = [ctx.Process(target=crash_child.resave_steps, args=(str(d), 25)) for _ in range(2)]
    for p in savers:
        p.start()
    for p in savers:
        p.join()
        assert p.exitcode == 0
    open(stop, "w").close()
    reader.join()
    assert reader.exitcode == 0
    head, *errors = open(result).read().split("\n")
    ok, bad = map(int, head.split())
    assert bad == 0, f"{bad} restores failed or returned data no save wrote: {errors[:5]}"
    assert ok > 20, ok
    st = fastckpt.get_checkpoint_state(str(d))
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == ["model-23", "model-24", "model-25"]
    assert not st.pending
    names = sorted(os.listdir(d))
    assert not [n for n in names if is_leftover(n)], names
    assert not fastckpt.collect_garbage(str(d), dry_run=True).unlisted
    assert len([n for n in names if n.endswith(".index")]) == 3
    counts["restores racing two re-savers"] = ok
