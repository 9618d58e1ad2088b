"""The local file system, as every layer above uses it: descriptors of
regular files only (never a FIFO), locked temporaries, atomic replacement,
fsyncs of files and directories, and fastckpt's errors for what the system
reports. The bottom layer: it imports nothing of fastckpt but its errors."""
