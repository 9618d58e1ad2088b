"""Two processes re-save the same steps into one directory while a third
restores the latest checkpoint in a loop: no restore fails or returns data
no save wrote, and nothing is left behind."""

import os

import pytest

import fastckpt
from tests.helpers import crash_child
from tests.helpers.races import resave_beside, result_of
from fastckpt.storage.locking import is_leftover

pytestmark = pytest.mark.no_sanitizer  # runs its own processes and preloads; slow under ASan


def test_two_resavers_and_a_reader(tmp_path, ctx, counts):
    d = tmp_path / "run"
    d.mkdir()
    stop, result = str(tmp_path / "stop"), str(tmp_path / "result")
    resave_beside(ctx, str(d), stop, [(crash_child.restore_latest_until, (str(d), stop, result))])
    ok, bad, errors = result_of(result)
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


@pytest.mark.parametrize("moment", ["after reading the index", "after opening the data files"])
def test_a_resave_while_a_reader_opens_never_mixes_generations(tmp_path, monkeypatch, moment):
    """A save replaces the checkpoint at the worst moments of an open: just
    after the reader read the old index (the old index's name then already
    names the new file, and the inode may be reused), or between opening
    the data files and checking the index again. The reader must read one
    generation whole: the new one, with its own values, or refuse."""
    import numpy as np

    from fastckpt.bundle import reader as reader_mod

    prefix = str(tmp_path / "ck")
    old = {"w": np.arange(100_000, dtype=np.float32), "b": np.zeros(7, np.int64)}
    new = {"w": np.arange(100_000, dtype=np.float32)[::-1] * 2, "b": np.ones(7, np.int64)}
    # Different layout too, so old offsets over new data would be wrong.
    new["a"] = np.full(1000, 3.0)
    fastckpt.save(old, prefix)
    fired = []

    def resave():
        if not fired:
            fired.append(True)
            fastckpt.save(new, prefix)

    def after(fn, hook):
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            hook()
            return result

        return wrapped

    if moment == "after reading the index":
        # Right after the index's bytes are read, whichever function reads them.
        for fn in ("read_fd", "read_file"):
            if hasattr(reader_mod, fn):
                monkeypatch.setattr(reader_mod, fn, after(getattr(reader_mod, fn), resave))
    else:
        monkeypatch.setattr(reader_mod.DataFiles, "open_all", after(reader_mod.DataFiles.open_all, resave))
    got = fastckpt.restore(prefix)
    assert fired
    assert sorted(got) == ["a", "b", "w"]
    for k in new:
        np.testing.assert_array_equal(got[k], new[k])
