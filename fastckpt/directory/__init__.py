"""A directory of checkpoints: the ``checkpoint`` state file, the lock,
what the state file lists, the commit, recovery of dead saves, retention,
recycling of retired data files, and the path convention of every reading
function (:mod:`fastckpt.directory.locate`)."""
