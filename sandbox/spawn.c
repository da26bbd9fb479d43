/* jailcc-spawn: the last step between the jail's init and a job, in C so that the init can
 * start it with vfork (posix_spawn): forking the Python init costs a millisecond or more per
 * job on a virtual machine, this costs a tenth of that.
 *
 * Usage: jailcc-spawn CWD CPU_SECONDS AS_BYTES FSIZE_BYTES NOFILE NPROC PROGRAM ARGV0 ARGS...
 * A limit of 0 means "leave as inherited". It starts a new session, resets the signals Python
 * ignores, makes the job the OOM killer's first choice, sets the limits (soft = hard, except
 * CPU whose hard limit is one second later so SIGXCPU comes first), closes every descriptor
 * above 2, changes to CWD and executes PROGRAM with ARGV0 ARGS... On any failure it writes one
 * line to stderr and exits 127, as a shell does for a command it cannot run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

static void die(const char *what, const char *arg) {
    dprintf(2, "jail: cannot run %s: %s: %s\n", arg, what, strerror(errno));
    _exit(127);
}

static unsigned long long number(const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || !*s) { errno = EINVAL; die("bad limit", s); }
    return v;
}

static void limit(int resource, unsigned long long soft, unsigned long long hard, const char *prog) {
    struct rlimit rl = {.rlim_cur = soft, .rlim_max = hard};
    if (setrlimit(resource, &rl) != 0) die("setrlimit", prog);
}

int main(int argc, char **argv) {
    if (argc < 9) {
        dprintf(2, "usage: jailcc-spawn CWD CPU AS FSIZE NOFILE NPROC PROGRAM ARGV0 [ARGS...]\n");
        return 127;
    }
    const char *cwd = argv[1], *prog = argv[7];
    unsigned long long cpu = number(argv[2]), as = number(argv[3]), fsize = number(argv[4]);
    unsigned long long nofile = number(argv[5]), nproc = number(argv[6]);

    setsid();
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);

    int fd = open("/proc/self/oom_score_adj", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "1000", 4) < 0) { /* best effort: the cgroup limit holds regardless */ }
        close(fd);
    }
    limit(RLIMIT_CORE, 0, 0, prog);
    if (cpu) limit(RLIMIT_CPU, cpu, cpu + 1, prog);
    if (as) limit(RLIMIT_AS, as, as, prog);
    if (fsize) limit(RLIMIT_FSIZE, fsize, fsize, prog);
    if (nofile) limit(RLIMIT_NOFILE, nofile, nofile, prog);
    if (nproc) limit(RLIMIT_NPROC, nproc, nproc, prog);

    if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
        for (int i = 3; i < 65536; i++) close(i);
    if (chdir(cwd) != 0) die("chdir", cwd);
    execve(prog, argv + 8, environ);
    die("execve", prog);
    return 127;
}
