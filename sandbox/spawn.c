/* jailcc-spawn: the last step between the jail's init and a job, in C so that the init can
 * start it with vfork (posix_spawn): forking the Python init costs a millisecond or more per
 * job on a virtual machine, this costs a tenth of that.
 *
 * Usage: jailcc-spawn CWD CPU_SECONDS AS_BYTES FSIZE_BYTES NOFILE NPROC SECCOMP PROGRAM ARGV0
 *        ARGS...
 *        jailcc-spawn --filter 1|2   (the seccomp filter's BPF program, raw, on stdout)
 * A limit of 0 means "leave as inherited". It starts a new session, resets the signals Python
 * ignores, makes the job the OOM killer's first choice, sets the limits (soft = hard, except
 * CPU whose hard limit is one second later so SIGXCPU comes first), with SECCOMP=1 installs a
 * seccomp filter (below; 2: without its socket family check, a test weakening), closes every descriptor above 2, changes to CWD and executes PROGRAM
 * with ARGV0 ARGS... On any failure it writes one line to stderr and exits 127, as a shell does
 * for a command it cannot run.
 *
 * The seccomp filter is defence in depth behind the jail: compilers need none of these calls,
 * and each has a record of kernel bugs or would reach state outside the jail. Keyrings belong
 * to the uid and outlive the jail; namespaces and mounts are refused by the missing
 * capabilities and the chroot already; ptrace, bpf, perf, userfaultfd, io_uring, module and
 * kexec calls are attack surface a compile never uses. They fail with EPERM; a foreign
 * architecture (x32 or 32-bit calls on x86_64, 32-bit ARM on aarch64) kills the process, which
 * also rules out socketcall(2): neither x86_64 nor aarch64 has it, only their 32-bit ABIs.
 *
 * socket() and socketpair() are allowed for AF_UNIX, AF_INET and AF_INET6 only; any other family
 * fails with EAFNOSUPPORT, as on a kernel built without it, so a program probing for one carries
 * on. The network namespace covers IP, but not vsock (a VM's channel to its host), netlink,
 * packet, crypto (AF_ALG) or Bluetooth sockets, each a kernel interface a compile never uses.
 * SECCOMP=2 (a test weakening) installs the filter without this family check.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define JAIL_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define JAIL_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "jailcc-spawn: add this architecture's audit arch"
#endif

static void die(const char *what, const char *arg);

#define DENY(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), \
                 BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM)

/* For socket(2) and socketpair(2): allow the families above, refuse the rest. The family is an
 * int, so only the low 32 bits of the argument count (the kernel truncates it the same way). */
#define SOCKET_FAMILIES(nr) \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 6), \
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])), \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 2, 0), \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET, 1, 0), \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 0, 1), \
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW), \
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT)

#define FILTER_MAX 128

/* The filter into `filter` (FILTER_MAX entries at most); returns its length. */
static size_t build_filter(struct sock_filter *filter, int socket_families) {
    struct sock_filter head[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, JAIL_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),  /* x32 ABI */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
#endif
        DENY(__NR_add_key), DENY(__NR_request_key), DENY(__NR_keyctl),
        DENY(__NR_unshare), DENY(__NR_setns), DENY(__NR_mount), DENY(__NR_umount2),
        DENY(__NR_pivot_root), DENY(__NR_chroot), DENY(__NR_ptrace),
        DENY(__NR_process_vm_readv), DENY(__NR_process_vm_writev), DENY(__NR_bpf),
        DENY(__NR_perf_event_open), DENY(__NR_userfaultfd), DENY(__NR_kexec_load),
        DENY(__NR_init_module), DENY(__NR_finit_module), DENY(__NR_delete_module),
        DENY(__NR_open_by_handle_at), DENY(__NR_name_to_handle_at),
        DENY(__NR_io_uring_setup), DENY(__NR_io_uring_enter), DENY(__NR_io_uring_register),
        DENY(__NR_fsopen), DENY(__NR_fsmount), DENY(__NR_fsconfig), DENY(__NR_move_mount),
        DENY(__NR_open_tree), DENY(__NR_mount_setattr), DENY(__NR_quotactl),
        DENY(__NR_swapon), DENY(__NR_swapoff), DENY(__NR_syslog), DENY(__NR_acct),
        DENY(__NR_settimeofday), DENY(__NR_clock_settime), DENY(__NR_reboot),
        /* clone3 passes its flags in memory the filter cannot read: glibc falls back to
         * clone, whose flags are checked below. */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    };
    struct sock_filter families[] = {SOCKET_FAMILIES(__NR_socket), SOCKET_FAMILIES(__NR_socketpair)};
    struct sock_filter tail[] = {
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K,
                 CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
                     | CLONE_NEWUTS | CLONE_NEWCGROUP, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    /* Each part falls through to the next with the syscall number loaded: join them. */
    _Static_assert(sizeof head + sizeof families + sizeof tail <= FILTER_MAX * sizeof *filter,
                   "FILTER_MAX");
    size_t len = 0;
    memcpy(filter, head, sizeof head);
    len += sizeof head / sizeof head[0];
    if (socket_families) {
        memcpy(filter + len, families, sizeof families);
        len += sizeof families / sizeof families[0];
    }
    memcpy(filter + len, tail, sizeof tail);
    return len + sizeof tail / sizeof tail[0];
}

static void install_seccomp(const char *prog, int socket_families) {
    struct sock_filter filter[FILTER_MAX];
    size_t len = build_filter(filter, socket_families);
    struct sock_fprog prog_desc = {.len = (unsigned short)len, .filter = filter};
    /* The init set no_new_privs already; setting it again is harmless and required. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("no_new_privs", prog);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog_desc) != 0) die("seccomp", prog);
}

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

/* setsid() puts the job in an autogroup of its own, which the scheduler weighs against the
 * desktop owner's as an equal whatever the job's own policy: take the init's autogroup nice
 * (jailccd raises it while a desktop's owner works), so the job yields as the init would. */
static void inherit_autogroup_nice(void) {
    char buf[128];
    int fd = open("/proc/1/autogroup", O_RDONLY);
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = 0;
    const char *nice = strstr(buf, " nice ");
    if (!nice || atoi(nice + 6) <= 0) return;
    fd = open("/proc/self/autogroup", O_WRONLY);
    if (fd < 0) return;
    if (write(fd, nice + 6, strcspn(nice + 6, "\n")) < 0) { /* best effort */ }
    close(fd);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--filter")) {
        /* The filter itself (2: without the family check), raw, for the jail's init to
         * install on itself (jail_init.py confine): one source for both. */
        struct sock_filter filter[FILTER_MAX];
        size_t bytes = build_filter(filter, strcmp(argv[2], "2") != 0) * sizeof *filter;
        return write(1, filter, bytes) == (ssize_t)bytes ? 0 : 127;
    }
    if (argc < 10) {
        dprintf(2, "usage: jailcc-spawn CWD CPU AS FSIZE NOFILE NPROC SECCOMP PROGRAM ARGV0"
                   " [ARGS...]\n");
        return 127;
    }
    const char *cwd = argv[1], *prog = argv[8];
    /* 1: the filter; 2: the filter without the socket family check (a test weakening). */
    int seccomp = !strcmp(argv[7], "1") || !strcmp(argv[7], "2");
    int socket_families = strcmp(argv[7], "2") != 0;
    unsigned long long cpu = number(argv[2]), as = number(argv[3]), fsize = number(argv[4]);
    unsigned long long nofile = number(argv[5]), nproc = number(argv[6]);

    setsid();
    inherit_autogroup_nice();
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

    if (seccomp) install_seccomp(prog, socket_families);
    if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
        for (int i = 3; i < 65536; i++) close(i);
    if (chdir(cwd) != 0) die("chdir", cwd);
    execve(prog, argv + 9, environ);
    die("execve", prog);
    return 127;
}
