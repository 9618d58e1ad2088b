# Checksums and varints (included by _core.pyx).

def crc32c(data, uint32_t crc=0):
    """CRC32C of a buffer, continuing from ``crc`` (hardware when available)."""
    cdef _Buffer b = _Buffer(data)
    cdef uint32_t r
    with nogil:
        r = fc_crc32c_extend(crc, b.view.buf, <size_t>b.view.len)
    return r


def crc32c_portable(data, uint32_t crc=0):
    """CRC32C through the portable table code (for tests)."""
    cdef _Buffer b = _Buffer(data)
    return fc_crc32c_extend_portable(crc, b.view.buf, <size_t>b.view.len)


def crc32c_parallel(data, int threads=2):
    """CRC32C of a large buffer on several threads."""
    cdef _Buffer b = _Buffer(data)
    cdef uint32_t r
    with nogil:
        r = fc_crc32c_parallel(b.view.buf, <uint64_t>b.view.len, threads)
    return r


def crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b):
    """CRC of A||B from crc(A), crc(B) and len(B)."""
    return fc_crc32c_combine(crc_a, crc_b, len_b)


def hw_crc_available():
    """True when the SSE4.2 CRC32C instruction is in use."""
    return bool(fc_crc32c_hw_available())


def mask_crc(uint32_t crc):
    """LevelDB's masked form of a CRC."""
    return fc_crc_mask(crc)


def unmask_crc(uint32_t masked):
    """Inverse of :func:`mask_crc`."""
    return fc_crc_unmask(masked)


def encode_varint(uint64_t v):
    """LEB128 bytes of an unsigned 64-bit value."""
    cdef uint8_t out[10]
    cdef size_t n = fc_put_varint(out, v)
    return PyBytes_FromStringAndSize(<char *>out, n)


def decode_varint(data):
    """(value, bytes consumed) of the varint at the start of ``data``."""
    cdef _Buffer b = _Buffer(data)
    cdef const uint8_t *p = <const uint8_t *>b.view.buf
    cdef const uint8_t *start = p
    cdef uint64_t v
    if fc_get_varint(&p, start + b.view.len, &v):
        raise DataLossError("truncated or over-long varint")
    return v, <size_t>(p - start)


