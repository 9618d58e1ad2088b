/* Reading memory that may map a file someone else truncates.
 *
 * A page of a mapped file that lies beyond the file's new end raises SIGBUS
 * when touched, which kills the process. Code that reads such memory (the
 * CRC pass of a write, the byte-plane split of a compressed write, a copy
 * out of a mapped source) runs inside fc_guarded(): a SIGBUS raised by the
 * guarded thread while it runs jumps back and fc_guarded returns -1, which
 * the caller reports as FC_DATA_LOSS. A SIGBUS anywhere else goes to the
 * disposition that was there before (the handler puts it back and the
 * faulting instruction runs again and meets it). The guarded function must
 * hold no lock and allocate nothing: it may be abandoned at any load. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fastckpt.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>

/* volatile, with signal fences: the stores must not be moved across fn's loads */
static __thread sigjmp_buf *volatile guard_jump;
static struct sigaction previous;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    sigjmp_buf *j = guard_jump;
    if (j && info && info->si_code > 0) { /* a fault of the guarded thread, not a kill(2) */
        guard_jump = NULL;
        siglongjmp(*j, 1);
    }
    sigaction(sig, &previous, NULL);
    if (!info || info->si_code <= 0) raise(sig); /* sent, not a fault: deliver it as before */
}

static int ours(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_sigbus;
}

/* Checked at every guarded call, not once: another library (Python's
 * faulthandler, enabled again by a framework) may have replaced the handler
 * since, and a SIGBUS would then kill the process instead of returning. */
static void install(void) {
    struct sigaction current;
    if (sigaction(SIGBUS, NULL, &current) == 0 && ours(&current)) return;
    pthread_mutex_lock(&install_lock);
    if (sigaction(SIGBUS, NULL, &current) == 0 && !ours(&current)) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGBUS, &sa, &previous);
    }
    pthread_mutex_unlock(&install_lock);
}

int fc_guarded(void (*fn)(void *), void *arg) {
    sigjmp_buf jump;
    install();
    if (sigsetjmp(jump, 0)) return -1; /* SA_NODEFER: SIGBUS is not left blocked */
    guard_jump = &jump;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    fn(arg);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    guard_jump = NULL;
    return 0;
}

typedef struct {
    void *dst;
    const void *src;
    size_t n;
} copy_args;

static void copy(void *arg) {
    copy_args *a = (copy_args *)arg;
    memcpy(a->dst, a->src, a->n);
}

int fc_guarded_copy(void *dst, const void *src, size_t n) {
    copy_args a = {dst, src, n};
    return fc_guarded(copy, &a);
}
