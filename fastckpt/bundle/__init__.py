"""One bundle -- ``PREFIX.index`` and its data files -- and nothing of a
directory: names, dtypes, index records, slices, framework tensors, the
write plan, staging, installation, the writer and the reader, regions of
partitioned tensors and zstd frames."""
