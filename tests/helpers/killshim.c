/* LD_PRELOAD shim for the systematic kill test: counts every mutating file
 * system call (writes, truncates, creates, renames, links, unlinks, fsyncs)
 * made while armed (every write entry point glibc exports: write, writev,
 * pwrite, pwritev and their 64-bit and v2 names, copy_file_range, fallocate), and SIGKILLs the process at the N-th, before the call
 * runs. The test first counts a save's calls, then kills at each in turn.
 *
 *   killshim_arm(n)   start counting; die at call n (n <= 0: only count)
 *   killshim_pause(p) stop (p=1) / resume (p=0) counting
 *   killshim_count()  calls counted so far
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static long target = 0;
static int armed = 0, paused = 0;
static long count = 0;

void killshim_arm(long n) { target = n; __atomic_store_n(&count, 0, __ATOMIC_SEQ_CST); armed = 1; }
void killshim_pause(int p) { paused = p; }
long killshim_count(void) { return __atomic_load_n(&count, __ATOMIC_SEQ_CST); }

static void hit(void) {
    if (!armed || paused) return;
    long c = __atomic_add_fetch(&count, 1, __ATOMIC_SEQ_CST);
    if (target > 0 && c == target) kill(getpid(), SIGKILL);
}

#define REAL(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *b, size_t n) { REAL(write); if (fd > 2) hit(); return real_write(fd, b, n); }
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) { REAL(pwrite); hit(); return real_pwrite(fd, b, n, o); }
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) { REAL(pwrite64); hit(); return real_pwrite64(fd, b, n, o); }
ssize_t writev(int fd, const struct iovec *v, int c) { REAL(writev); if (fd > 2) hit(); return real_writev(fd, v, c); }
ssize_t pwritev64(int fd, const struct iovec *v, int c, off_t o) { REAL(pwritev64); hit(); return real_pwritev64(fd, v, c, o); }
ssize_t pwritev64v2(int fd, const struct iovec *v, int c, off_t o, int f) { REAL(pwritev64v2); hit(); return real_pwritev64v2(fd, v, c, o, f); }
ssize_t copy_file_range(int a, off_t *ao, int b, off_t *bo, size_t n, unsigned f) { REAL(copy_file_range); hit(); return real_copy_file_range(a, ao, b, bo, n, f); }
int fallocate(int fd, int m, off_t o, off_t n) { REAL(fallocate); hit(); return real_fallocate(fd, m, o, n); }
int posix_fallocate(int fd, off_t o, off_t n) { REAL(posix_fallocate); hit(); return real_posix_fallocate(fd, o, n); }
ssize_t pwritev(int fd, const struct iovec *v, int c, off_t o) { REAL(pwritev); hit(); return real_pwritev(fd, v, c, o); }
ssize_t pwritev2(int fd, const struct iovec *v, int c, off_t o, int f) { REAL(pwritev2); hit(); return real_pwritev2(fd, v, c, o, f); }
int ftruncate(int fd, off_t n) { REAL(ftruncate); hit(); return real_ftruncate(fd, n); }
int ftruncate64(int fd, off_t n) { REAL(ftruncate64); hit(); return real_ftruncate64(fd, n); }
int fsync(int fd) { REAL(fsync); hit(); return real_fsync(fd); }
int fdatasync(int fd) { REAL(fdatasync); hit(); return real_fdatasync(fd); }
int rename(const char *a, const char *b) { REAL(rename); hit(); return real_rename(a, b); }
int renameat(int d1, const char *a, int d2, const char *b) { REAL(renameat); hit(); return real_renameat(d1, a, d2, b); }
int renameat2(int d1, const char *a, int d2, const char *b, unsigned f) { REAL(renameat2); hit(); return real_renameat2(d1, a, d2, b, f); }
int unlink(const char *p) { REAL(unlink); hit(); return real_unlink(p); }
int unlinkat(int d, const char *p, int f) { REAL(unlinkat); hit(); return real_unlinkat(d, p, f); }
int link(const char *a, const char *b) { REAL(link); hit(); return real_link(a, b); }
int linkat(int d1, const char *a, int d2, const char *b, int f) { REAL(linkat); hit(); return real_linkat(d1, a, d2, b, f); }
int mkdir(const char *p, mode_t m) { REAL(mkdir); hit(); return real_mkdir(p, m); }

#define OPEN_MODE mode_t mode = 0; if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
#define MUTATING(flags) ((flags) & (O_CREAT | O_TRUNC))
int open(const char *p, int flags, ...) { OPEN_MODE REAL(open); if (MUTATING(flags)) hit(); return real_open(p, flags, mode); }
int open64(const char *p, int flags, ...) { OPEN_MODE REAL(open64); if (MUTATING(flags)) hit(); return real_open64(p, flags, mode); }
int openat(int d, const char *p, int flags, ...) { OPEN_MODE REAL(openat); if (MUTATING(flags)) hit(); return real_openat(d, p, flags, mode); }
int openat64(int d, const char *p, int flags, ...) { OPEN_MODE REAL(openat64); if (MUTATING(flags)) hit(); return real_openat64(d, p, flags, mode); }
