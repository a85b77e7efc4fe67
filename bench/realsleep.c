/* Preloaded before libfaketime by bench/retention.py: sleeps of the monotonic
 * clock go straight to the kernel. libfaketime 0.9.10 (Debian 12) turns an
 * absolute clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which is how
 * Python's time.sleep sleeps, into EINVAL even with
 * FAKETIME_DONT_FAKE_MONOTONIC=1; the benchmark fakes only the wall clock. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req,
                    struct timespec *rem)
{
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (clock == CLOCK_MONOTONIC) {
        /* the raw system call returns -1 and sets errno; this call returns the error */
        return syscall(SYS_clock_nanosleep, clock, flags, req, rem) ? errno : 0;
    }
    if (!next)
        next = dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock, flags, req, rem);
}
