# Compressed payloads: byte planes + zstd in chunks, on C threads (included by _core.pyx).

ZSTD_MIN_CONSUMER = FC_ZSTD_MIN_CONSUMER
ZFRAME_HEADER = FC_ZFRAME_HEADER


def zstd_version():
    """libzstd's version number (10504 for 1.5.4), or 0 when it is missing."""
    return fc_zstd_version()


def zdecompress_into(frame, out, int itemsize, int threads, expected_crc, str what):
    """Restore a frame into the C-contiguous buffer ``out`` (its raw size
    is the entry's), checking its CRC32C against ``expected_crc``
    (unmasked; None: unchecked). Errors name ``what``."""
    cdef _Buffer f = _Buffer(frame)
    cdef _Buffer o = _Buffer(out, True)
    cdef uint32_t crc = 0
    cdef fc_status st
    cdef int rc
    fc_status_clear(&st)
    with nogil:
        rc = fc_zdecompress(<const uint8_t *>f.view.buf, <uint64_t>f.view.len, <uint8_t *>o.view.buf,
                            <uint64_t>o.view.len, itemsize, threads, &crc, &st)
    if rc:
        _raise(&st, what)
    if expected_crc is not None and crc != expected_crc:
        raise DataLossError(f"{what}: checksum does not match: stored {fc_crc_mask(expected_crc)} vs. "
                            f"calculated {fc_crc_mask(crc)}")
    return crc


def zframe_table(head, uint64_t frame_len, uint64_t raw_len, int itemsize, str what):
    """``(chunk_raw, [stored length word of each chunk], offset of chunk 0)``
    of a frame from its first bytes (header and chunk table), checked."""
    cdef _Buffer h = _Buffer(head)
    cdef fc_zframe fr
    cdef fc_status st
    cdef uint32_t c
    fc_status_clear(&st)
    if fc_zframe_parse(<const uint8_t *>h.view.buf, <uint64_t>h.view.len, frame_len, raw_len, itemsize, &fr, &st):
        _raise(&st, what)
    if fr.table == NULL:
        raise InvalidArgumentError(f"{what}: give the frame's first {fr.table_end} bytes")
    return fr.chunk_raw, [int.from_bytes(head[FC_ZFRAME_HEADER + 4 * c: FC_ZFRAME_HEADER + 4 * c + 4], "little")
                          for c in range(fr.n_chunks)], fr.table_end


def zchunk_decode(src, uint32_t stored, out, int itemsize, str what):
    """Restore one chunk (its stored bytes and length word) into ``out``."""
    cdef _Buffer s = _Buffer(src)
    cdef _Buffer o = _Buffer(out, True)
    cdef fc_status st
    cdef void *dctx
    cdef uint8_t *scratch = NULL
    cdef int rc
    fc_status_clear(&st)
    if <uint64_t>s.view.len != (stored & 0x7fffffffu):
        raise DataLossError(f"{what}: a compressed chunk is {s.view.len} bytes, its table says {stored & 0x7fffffff}")
    dctx = fc_zdctx_new(&st)
    if dctx == NULL:
        _raise(&st, what)
    try:
        if itemsize > 1:
            scratch = <uint8_t *>malloc(<size_t>o.view.len if o.view.len else 1)
            if scratch == NULL:
                raise MemoryError()
        with nogil:
            rc = fc_zchunk_decode(<const uint8_t *>s.view.buf, stored, <uint8_t *>o.view.buf, <uint64_t>o.view.len,
                                  itemsize, dctx, scratch, &st)
        if rc:
            _raise(&st, what)
    finally:
        free(scratch)
        fc_zdctx_free(dctx)


def zdecompress_chunks(src, words, uint64_t chunk_raw, out, int itemsize, int threads, str what):
    """Restore consecutive chunks -- their stored bytes ``src``, their
    length words ``words`` (bytes, 4 each, from the frame's table) -- into
    ``out`` (their raw bytes); returns the CRC32C of what was restored."""
    cdef _Buffer s = _Buffer(src)
    cdef _Buffer w = _Buffer(words)
    cdef _Buffer o = _Buffer(out, True)
    cdef uint32_t crc = 0
    cdef fc_status st
    cdef int rc
    cdef uint32_t n = <uint32_t>(w.view.len // 4)
    fc_status_clear(&st)
    with nogil:
        rc = fc_zdecompress_chunks(<const uint8_t *>s.view.buf, <uint64_t>s.view.len, <const uint8_t *>w.view.buf, n,
                                   chunk_raw, <uint64_t>o.view.len, itemsize, <uint8_t *>o.view.buf, threads, &crc,
                                   &st)
    if rc:
        _raise(&st, what)
    return crc
