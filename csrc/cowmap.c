/* Copy-on-write maps of data files: arrays restored without a copy.
 *
 * A tensor restored into a fresh array can be a private (MAP_PRIVATE)
 * mapping of the data file: its pages are the page cache's until written
 * (then copied, page by page), so a restore costs the CRC pass and no
 * first touch of new anonymous memory. Such a map is only safe while the
 * file under it keeps its bytes: a page not yet copied shows the file as it
 * is *now*, and a page beyond a truncated end raises SIGBUS.
 *
 * The guard is a read lease (fcntl F_SETLEASE, F_RDLCK) on the file, taken
 * before the map is made and its bytes checked. The kernel refuses the lease
 * while anyone has the file open for writing, and afterwards makes every
 * open for writing and every truncate(2) of it wait (up to
 * /proc/sys/fs/lease-break-time, 45 s by default) while it signals us. The
 * signal's handler (below) first moves the bytes of the maps of that file
 * into anonymous memory at the same addresses (make_private) and only then
 * releases the lease, so the writer proceeds against a file no array shows
 * any more. Unlinking or renaming the file needs no guard: the
 * map keeps the inode alive.
 *
 * Where no lease can be had (another file system, another owner without
 * CAP_LEASE, a writer already present, the signal taken by someone else,
 * every slot in use) fc_cow_map returns 1 and the caller copies as before.
 *
 * Signal-handler safety: the handler reads the slot table, which the normal
 * path changes only through atomic state transitions (FREE -> CLAIMED ->
 * LIVE -> FREEING -> FREE); a handler owns a slot while it is BUSY, and
 * fc_cow_unmap waits for that to end. It calls only async-signal-safe
 * system calls (fcntl, mprotect, mmap, mremap, munmap, madvise, sigaction)
 * and memcpy, and keeps errno. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fastckpt.h"

#if !defined(__linux__)
/* Leases with a chosen signal (F_SETSIG) and mremap are Linux's: elsewhere
 * every restore copies. */
int fc_cow_map(int fd, uint64_t offset, uint64_t len, void **addr, int *slot) {
    (void)fd, (void)offset, (void)len;
    *addr = NULL;
    *slot = -1;
    return 1;
}
void fc_cow_unmap(int slot) { (void)slot; }
int fc_cow_copied(int slot) { (void)slot; return 0; }
int fc_cow_copies(void) { return 0; }
#else

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define NSLOTS 1024
enum { S_FREE = 0, S_CLAIMED, S_LIVE, S_BUSY, S_FREEING };

typedef struct {
    int state; /* atomic */
    int fd;
    int copied; /* the pages are private already: the file may change */
    int moving; /* atomic: being moved into anonymous memory */
    pid_t owner; /* the process that took the lease (a forked child shares the description) */
    void *addr;
    size_t len;
} slot_t;

static slot_t slots[NSLOTS] = {[0 ... NSLOTS - 1] = {S_FREE, -1, 0, 0, 0, NULL, 0}};
static int break_signal; /* 0 until installed; -1 when unavailable */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static long page_size;
static int copies; /* atomic: how many maps the handler has copied (for tests) */

/* ---- moving a map into anonymous memory -------------------------------------
 * Copying the pages in place (MAP_PRIVATE copy-on-write) is not enough:
 * truncating a file zaps even the private copies of its pages beyond the
 * new end (POSIX wants SIGBUS there). So the map's bytes are moved into
 * anonymous memory at the same address: the range is made read-only, copied
 * into a new anonymous map, and that map is moved over the old range with
 * mremap (MREMAP_FIXED replaces it atomically). A thread that writes into
 * the range meanwhile takes SIGSEGV: the handler below waits until the move
 * is done and returns, and the write is retried on the new memory.
 *
 * The handler stays installed once a move has run (checked and put back at
 * every move): a write that faulted during a move may be delivered only
 * after the move ended (the faulting thread preempted in the kernel between
 * the fault and the delivery), and a concurrent move of another map needs it
 * too -- a handler removed at the end of one move killed writers of the
 * other (tests/robustness: test_writes_racing_the_move_are_kept, seen in
 * about 1 of 20 runs under load). A fault inside a live map that is not
 * moving any more is such a late delivery: the write is retried. Any other
 * SIGSEGV goes to the handler that was there before. */
static struct sigaction segv_previous;

static int in_map(const char *a, int *is_moving) {
    for (int i = 0; i < NSLOTS; i++) {
        slot_t *s = &slots[i];
        int st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
        if (st != S_LIVE && st != S_BUSY) continue;
        const char *lo = (const char *)s->addr;
        if (lo && a >= lo && a < lo + s->len) {
            *is_moving = __atomic_load_n(&s->moving, __ATOMIC_ACQUIRE);
            return i;
        }
    }
    return -1;
}

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    int saved = errno;
    int is_moving = 0;
    int i = info && info->si_code > 0 ? in_map((const char *)info->si_addr, &is_moving) : -1;
    if (i >= 0) {
        while (__atomic_load_n(&slots[i].moving, __ATOMIC_ACQUIRE)) sched_yield();
        errno = saved;
        return; /* the write is retried on the moved memory */
    }
    /* not ours: to the handler that was there before */
    struct sigaction prev = segv_previous;
    if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
        prev.sa_sigaction(sig, info, ctx);
    } else if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
    } else {
        sigaction(sig, &prev, NULL); /* default: the fault recurs and ends the process */
        if (!info || info->si_code <= 0) raise(sig);
    }
    errno = saved;
}

/* Our SIGSEGV handler in place (async-signal-safe: from the lease handler). */
static void move_begin(void) {
    struct sigaction cur;
    if (sigaction(SIGSEGV, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_segv)
        return;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &old) == 0 && !((old.sa_flags & SA_SIGINFO) && old.sa_sigaction == on_segv))
        segv_previous = old;
}

/* The bytes of slot s moved into anonymous memory at the same address
 * (copy-on-write in place, if the move cannot be made: safe from writers,
 * not from a truncation). */
static void make_private(slot_t *s) {
    void *addr = s->addr;
    size_t len = s->len;
    move_begin();
    __atomic_store_n(&s->moving, 1, __ATOMIC_RELEASE);
    int moved = 0;
    if (mprotect(addr, len, PROT_READ) == 0) {
        void *fresh = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (fresh != MAP_FAILED) {
            madvise(fresh, len, MADV_HUGEPAGE); /* fewer faults to fill it, where THP is on */
            memcpy(fresh, addr, len);
            if (mremap(fresh, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, addr) != MAP_FAILED)
                moved = 1;
            else
                munmap(fresh, len);
        }
        if (!moved) mprotect(addr, len, PROT_READ | PROT_WRITE);
    }
    if (!moved && madvise(addr, len, MADV_POPULATE_WRITE) != 0)
        for (size_t at = 0; at < len; at += (size_t)page_size)
            __atomic_fetch_or((volatile unsigned char *)addr + at, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->moving, 0, __ATOMIC_RELEASE);
}

/* Copies every map of the file open as `fd` whose lease is being broken,
 * then lets the writer go on. From the handler, or from fc_cow_map for a
 * break that came before its map was listed. */
static void serve_break(int fd) {
    /* A lease being broken reads as F_UNLCK; F_RDLCK means this signal is
     * stale (its descriptor closed and reused by a map still guarded). */
    if (fd < 0 || fcntl(fd, F_GETLEASE) == F_RDLCK) return;
    int found = 0, busy = 0;
    for (int i = 0; i < NSLOTS; i++) {
        slot_t *s = &slots[i];
        int expect = S_LIVE;
        if (__atomic_load_n(&s->fd, __ATOMIC_ACQUIRE) != fd) continue;
        if (!__atomic_compare_exchange_n(&s->state, &expect, S_BUSY, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            busy |= expect == S_BUSY; /* another thread copies it, then releases */
            continue;
        }
        if (s->fd == fd) {
            found = 1;
            if (!s->copied) {
                make_private(s);
                s->copied = 1;
                __atomic_fetch_add(&copies, 1, __ATOMIC_RELAXED);
            }
        }
        __atomic_store_n(&s->state, S_LIVE, __ATOMIC_RELEASE);
    }
    if (found && !busy) fcntl(fd, F_SETLEASE, F_UNLCK); /* the writer goes on */
}

static void on_lease_break(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    (void)ctx;
    int saved = errno;
    if (info) serve_break(info->si_fd);
    errno = saved;
}

static int set_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_lease_break;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

/* The lease-break signal, with our handler on it; checked at every map:
 * a library that restores every signal's disposition (PyTorch Lightning's
 * Trainer at the end of fit: SIG_DFL for the signals Python never set) may
 * have reset it -- it is put back; someone else's handler there means no
 * map now (-1: the caller copies). */
static int install(void) {
    int sig;
    pthread_mutex_lock(&install_lock);
    if (!break_signal) {
        struct sigaction old;
        sig = SIGRTMAX - 6;
        break_signal = -1;
        page_size = sysconf(_SC_PAGESIZE);
        if (page_size > 0 && sigaction(sig, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
            old.sa_handler == SIG_DFL && set_handler(sig) == 0)
            break_signal = sig;
    }
    sig = break_signal;
    if (sig > 0) {
        struct sigaction cur;
        if (sigaction(sig, NULL, &cur) != 0)
            sig = -1;
        else if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_lease_break)
            ; /* ours */
        else if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL)
            sig = set_handler(sig) == 0 ? sig : -1;
        else
            sig = -1;
    }
    pthread_mutex_unlock(&install_lock);
    return sig;
}

int fc_cow_map(int fd, uint64_t offset, uint64_t len, void **addr, int *slot) {
    *addr = NULL;
    *slot = -1;
    if (len == 0 || len > (uint64_t)SIZE_MAX || offset > (uint64_t)INT64_MAX - len) return 1;
    int sig = install();
    if (sig <= 0 || offset % (uint64_t)page_size) return 1;
    int i, free_state;
    for (i = 0; i < NSLOTS; i++) {
        free_state = S_FREE;
        if (__atomic_compare_exchange_n(&slots[i].state, &free_state, S_CLAIMED, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED))
            break;
    }
    if (i == NSLOTS) return 1;
    slot_t *s = &slots[i];
    /* A description of its own (not a dup): a lease belongs to an open file
     * description, and each map must keep its lease until it is unmapped. */
    char name[64];
    snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
    int own = open(name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat a, b;
    if (own < 0) goto refused;
    if (fstat(fd, &a) != 0 || fstat(own, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev ||
        !S_ISREG(b.st_mode))
        goto refused_fd;
    /* a reader's shared lock: no save recycles the file while it is mapped */
    if (flock(own, LOCK_SH | LOCK_NB) != 0) goto refused_fd;
    if (fcntl(own, F_SETSIG, sig) != 0 || fcntl(own, F_SETLEASE, F_RDLCK) != 0) goto refused_fd;
    /* checked under the lease: a file cut before it was taken is not mapped */
    if (fstat(own, &b) != 0 || (uint64_t)b.st_size < offset + len) goto refused_lease;
    void *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_PRIVATE, own, (off_t)offset);
    if (p == MAP_FAILED) goto refused_lease;
    s->addr = p;
    s->len = (size_t)len;
    s->copied = 0;
    s->owner = getpid();
    __atomic_store_n(&s->fd, own, __ATOMIC_RELEASE);
    __atomic_store_n(&s->state, S_LIVE, __ATOMIC_RELEASE);
    /* a break that came before the slot was live found nothing to copy */
    if (fcntl(own, F_GETLEASE) != F_RDLCK) serve_break(own);
    *addr = p;
    *slot = i;
    return 0;
refused_lease:
    fcntl(own, F_SETLEASE, F_UNLCK);
refused_fd:
    close(own);
refused:
    __atomic_store_n(&s->state, S_FREE, __ATOMIC_RELEASE);
    return 1;
}

void fc_cow_unmap(int slot) {
    if (slot < 0 || slot >= NSLOTS) return;
    slot_t *s = &slots[slot];
    for (;;) {
        int expect = S_LIVE;
        if (__atomic_compare_exchange_n(&s->state, &expect, S_FREEING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            break;
        if (expect != S_BUSY) return; /* not a map of ours */
        sched_yield();                /* a handler is copying it: it ends soon */
    }
    munmap(s->addr, s->len);
    int fd = s->fd;
    __atomic_store_n(&s->fd, -1, __ATOMIC_RELEASE);
    /* The lease belongs to the open file description, which a forked child
     * shares with its parent: only the process that took it releases it
     * (a child's close leaves the description, and the parent's guard, alone). */
    if (s->owner == getpid()) fcntl(fd, F_SETLEASE, F_UNLCK);
    close(fd);
    s->addr = NULL;
    s->len = 0;
    __atomic_store_n(&s->state, S_FREE, __ATOMIC_RELEASE);
}

int fc_cow_copied(int slot) {
    if (slot < 0 || slot >= NSLOTS) return 0;
    return __atomic_load_n(&slots[slot].state, __ATOMIC_ACQUIRE) != S_FREE && slots[slot].copied;
}

int fc_cow_copies(void) { return __atomic_load_n(&copies, __ATOMIC_RELAXED); }

#endif /* __linux__ */
