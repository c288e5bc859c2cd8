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
 *   PS_KILL_AT=commit:SUFFIX:N
 *                           SUFFIX names SQLite's write-ahead log: the
 *                           process kills itself just before the Nth commit
 *                           writes its first frame there. (A commit writes
 *                           frames, at offsets past the log's 32-byte
 *                           header, then syncs the log, with
 *                           synchronous=FULL; a log started anew has its
 *                           header written at offset 0 and synced first,
 *                           which is not a commit.)
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

/* With PS_KILL_AT=commit:SUFFIX:N, SUFFIX and N; else NULL. */
static const char *commit_spec(int *nth) {
    static char suffix[1024];
    static int parsed, commit_nth;
    if (!__atomic_load_n(&parsed, __ATOMIC_ACQUIRE)) {
        const char *spec = getenv("PS_KILL_AT");
        suffix[0] = 0;
        if (spec && strncmp(spec, "commit:", 7) == 0) {
            const char *a = spec + 7, *b = strchr(a, ':');
            size_t len = b ? (size_t)(b - a) : strlen(a);
            if (len < sizeof suffix) {
                memcpy(suffix, a, len);
                suffix[len] = 0;
                commit_nth = b ? atoi(b + 1) : 1;
            }
        }
        __atomic_store_n(&parsed, 1, __ATOMIC_RELEASE);
    }
    *nth = commit_nth;
    return suffix[0] ? suffix : NULL;
}

static int commits, frames_unsynced;

/* Counts a commit of the log: a sync after frames were written. */
static void commit_synced(int fd) {
    int nth;
    const char *suffix = commit_spec(&nth);
    if (suffix && fd_ends_with(fd, suffix) &&
        __atomic_exchange_n(&frames_unsynced, 0, __ATOMIC_SEQ_CST) > 0)
        __atomic_add_fetch(&commits, 1, __ATOMIC_SEQ_CST);
}

/* Dies here if this write to the log is the first frame of the commit
   meant. */
static void commit_write(int fd, off64_t at) {
    int nth;
    const char *suffix = commit_spec(&nth);
    if (!suffix || at == 0 || !fd_ends_with(fd, suffix))
        return;
    if (__atomic_load_n(&commits, __ATOMIC_SEQ_CST) == nth - 1 &&
        __atomic_load_n(&frames_unsynced, __ATOMIC_SEQ_CST) == 0)
        kill(getpid(), SIGKILL);
    __atomic_add_fetch(&frames_unsynced, 1, __ATOMIC_SEQ_CST);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = dlsym(RTLD_NEXT, "fsync");
    commit_synced(fd);
    return sync_fault(fd) ? -1 : real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = dlsym(RTLD_NEXT, "fdatasync");
    commit_synced(fd);
    return sync_fault(fd) ? -1 : real(fd);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t at) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real)
        real = dlsym(RTLD_NEXT, "pwrite");
    commit_write(fd, at);
    return real(fd, buf, n, at);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t at) {
    static ssize_t (*real)(int, const void *, size_t, off64_t);
    if (!real)
        real = dlsym(RTLD_NEXT, "pwrite64");
    commit_write(fd, at);
    return real(fd, buf, n, at);
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
