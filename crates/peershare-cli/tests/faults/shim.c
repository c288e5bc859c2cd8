/*
 * A fault-injecting layer for the real `peershare` binary, loaded with
 * LD_PRELOAD by tests/faults.rs (which builds it with the system C
 * compiler). It produces faults that cannot be produced for real on demand:
 *
 *   PS_FAULT_SYNC=SUFFIX    the first fsync/fdatasync of a file whose path
 *                           ends with SUFFIX fails with EIO, and the file's
 *                           bytes become zeros first, as when the kernel
 *                           loses pages it could not write back.
 *   PS_KILL_AT=CALL:SUFFIX:N
 *                           the process kills itself (SIGKILL) just before
 *                           the Nth call of CALL (link, unlink or rename)
 *                           whose path (the new path for link and rename)
 *                           ends with SUFFIX.
 *
 * Everything else passes through to libc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int fd_ends_with(int fd, const char *suffix) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return 0;
    path[n] = 0;
    return ends_with(path, suffix);
}

static int sync_fired;

/* True when this sync is the one to fail (its file zeroed first). */
static int sync_fault(int fd) {
    const char *suffix = getenv("PS_FAULT_SYNC");
    if (!suffix || !fd_ends_with(fd, suffix))
        return 0;
    if (__atomic_exchange_n(&sync_fired, 1, __ATOMIC_SEQ_CST))
        return 0;
    struct stat st;
    if (fstat(fd, &st) == 0) {
        static char zeros[1 << 16];
        for (off_t at = 0; at < st.st_size; at += sizeof zeros) {
            size_t len = st.st_size - at < (off_t)sizeof zeros ? st.st_size - at : sizeof zeros;
            if (pwrite(fd, zeros, len, at) < 0)
                break;
        }
    }
    errno = EIO;
    return 1;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = dlsym(RTLD_NEXT, "fsync");
    return sync_fault(fd) ? -1 : real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = dlsym(RTLD_NEXT, "fdatasync");
    return sync_fault(fd) ? -1 : real(fd);
}

static int kill_calls;

/* Dies here if this is the call PS_KILL_AT names. */
static void maybe_die(const char *call, const char *path) {
    const char *spec = getenv("PS_KILL_AT");
    if (!spec || !path)
        return;
    char want[64], suffix[1024];
    int nth = 1;
    const char *a = strchr(spec, ':');
    if (!a || (size_t)(a - spec) >= sizeof want)
        return;
    memcpy(want, spec, a - spec);
    want[a - spec] = 0;
    const char *b = strchr(a + 1, ':');
    size_t len = b ? (size_t)(b - a - 1) : strlen(a + 1);
    if (len >= sizeof suffix)
        return;
    memcpy(suffix, a + 1, len);
    suffix[len] = 0;
    if (b)
        nth = atoi(b + 1);
    if (strcmp(want, call) != 0 || !ends_with(path, suffix))
        return;
    if (__atomic_add_fetch(&kill_calls, 1, __ATOMIC_SEQ_CST) == nth)
        kill(getpid(), SIGKILL);
}

int link(const char *old, const char *new) {
    static int (*real)(const char *, const char *);
    if (!real)
        real = dlsym(RTLD_NEXT, "link");
    maybe_die("link", new);
    return real(old, new);
}

int linkat(int olddirfd, const char *old, int newdirfd, const char *new, int flags) {
    static int (*real)(int, const char *, int, const char *, int);
    if (!real)
        real = dlsym(RTLD_NEXT, "linkat");
    maybe_die("link", new);
    return real(olddirfd, old, newdirfd, new, flags);
}

int unlink(const char *path) {
    static int (*real)(const char *);
    if (!real)
        real = dlsym(RTLD_NEXT, "unlink");
    maybe_die("unlink", path);
    return real(path);
}

int unlinkat(int dirfd, const char *path, int flags) {
    static int (*real)(int, const char *, int);
    if (!real)
        real = dlsym(RTLD_NEXT, "unlinkat");
    maybe_die("unlink", path);
    return real(dirfd, path, flags);
}

int rename(const char *old, const char *new) {
    static int (*real)(const char *, const char *);
    if (!real)
        real = dlsym(RTLD_NEXT, "rename");
    maybe_die("rename", new);
    return real(old, new);
}

int renameat(int olddirfd, const char *old, int newdirfd, const char *new) {
    static int (*real)(int, const char *, int, const char *);
    if (!real)
        real = dlsym(RTLD_NEXT, "renameat");
    maybe_die("rename", new);
    return real(olddirfd, old, newdirfd, new);
}

int renameat2(int olddirfd, const char *old, int newdirfd, const char *new, unsigned flags) {
    static int (*real)(int, const char *, int, const char *, unsigned);
    if (!real)
        real = dlsym(RTLD_NEXT, "renameat2");
    maybe_die("rename", new);
    return real(olddirfd, old, newdirfd, new, flags);
}
