/* readlog.so: which files gcc's preprocessor opened, and which names it looked for in vain.
 *
 * Built into a toolchain image by `jailcc-image build --headers` and preloaded (LD_PRELOAD)
 * into the user's own compile inside a jail, so that one compile tells the jail every file it
 * read, system headers included, whatever -M options the user gave (jobs/session.py). Without
 * it a -MMD job needs a second, preprocessing-only pass to learn the system headers.
 *
 * Only gcc's compilers proper log, cc1, cc1plus, cc1obj and cc1objplus (the driver's and the
 * assembler's opens are the image's own files and temporaries). Each open for reading appends one record to the file named by
 * JAILCC_READ_LOG: "R" and the name for a success, "M" for a failure with ENOENT or ENOTDIR
 * (a header search that went on to the next directory), the name as the compiler passed it,
 * NUL-terminated. A name relative to a directory fd other than the cwd is not logged as such:
 * it gets "?" (the jail then does not trust the log; libcpp never does this).
 *
 * This is a record of an honest compiler for the soundness check, not a security boundary:
 * the jail is the boundary, and a user who defeats the log only fools their own build.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static int log_fd = -1;

static int is_compiler_proper(const char *name)
{
    static const char *const names[] = {"cc1", "cc1plus", "cc1obj", "cc1objplus"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return 0;
}

__attribute__((constructor)) static void readlog_start(void)
{
    const char *path = getenv("JAILCC_READ_LOG");
    if (path == NULL || !is_compiler_proper(program_invocation_short_name))
        return;
    /* The raw syscall: open() here would be our own. O_APPEND: one write, one whole record. */
    log_fd = (int)syscall(SYS_openat, AT_FDCWD, path,
                          O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
}

static void note(int dirfd, const char *path, int flags, int ok)
{
    if (log_fd < 0 || path == NULL || (flags & O_ACCMODE) != O_RDONLY)
        return;
    if (!ok && errno != ENOENT && errno != ENOTDIR)
        return;
    int saved = errno;
    char kind = ok ? 'R' : 'M';
    if (dirfd != AT_FDCWD && path[0] != '/')
        kind = '?';
    size_t len = strlen(path);
    char buf[4096 + 2];
    if (len > 4096) {
        kind = '?';
        len = 0;
    }
    buf[0] = kind;
    memcpy(buf + 1, path, len);
    buf[len + 1] = '\0';
    ssize_t done = write(log_fd, buf, len + 2);
    (void)done;
    errno = saved;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | __O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
}

#define REAL(name, type) \
    static type real; \
    if (real == NULL) \
        real = (type)dlsym(RTLD_NEXT, name)

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef FILE *(*fopen_fn)(const char *, const char *);

#define DEFINE_OPEN(fname) \
    int fname(const char *path, int flags, ...) \
    { \
        va_list ap; \
        va_start(ap, flags); \
        mode_t mode = mode_arg(flags, ap); \
        va_end(ap); \
        REAL(#fname, open_fn); \
        int fd = real(path, flags, mode); \
        note(AT_FDCWD, path, flags, fd >= 0); \
        return fd; \
    }

#define DEFINE_OPENAT(fname) \
    int fname(int dirfd, const char *path, int flags, ...) \
    { \
        va_list ap; \
        va_start(ap, flags); \
        mode_t mode = mode_arg(flags, ap); \
        va_end(ap); \
        REAL(#fname, openat_fn); \
        int fd = real(dirfd, path, flags, mode); \
        note(dirfd, path, flags, fd >= 0); \
        return fd; \
    }

/* _FORTIFY_SOURCE's checked variants, which glibc's own open() does not go through. */
#define DEFINE_OPEN2(fname) \
    int fname(const char *path, int flags) \
    { \
        REAL(#fname, open2_fn); \
        int fd = real(path, flags); \
        note(AT_FDCWD, path, flags, fd >= 0); \
        return fd; \
    }

#define DEFINE_FOPEN(fname) \
    FILE *fname(const char *path, const char *how) \
    { \
        REAL(#fname, fopen_fn); \
        FILE *f = real(path, how); \
        note(AT_FDCWD, path, how != NULL && how[0] == 'r' && strchr(how, '+') == NULL \
                                 ? O_RDONLY : O_WRONLY, f != NULL); \
        return f; \
    }

DEFINE_OPEN(open)
DEFINE_OPEN(open64)
DEFINE_OPENAT(openat)
DEFINE_OPENAT(openat64)
DEFINE_OPEN2(__open_2)
DEFINE_OPEN2(__open64_2)
DEFINE_FOPEN(fopen)
DEFINE_FOPEN(fopen64)
