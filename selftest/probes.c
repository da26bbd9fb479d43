/* Escape probes for `jailccd selftest`, run as a job inside a real jail.
 *
 * Usage: probe NAME [ARGS...]. Each probe tries one way out and prints one line:
 * "PASS <what blocked it>" or "FAIL <what got through>". Probes that test a limit (memory,
 * processes, disk, time, output) stop by themselves at a bound well past the jail's limit, so a
 * weakened jail is shown to fail without hurting the host. Nothing here sends a packet to any
 * address but 127.0.0.1 (from inside the jail's own network namespace).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;
static char detail[4096];

static void escaped(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void escaped(const char *fmt, ...) {
    va_list ap;
    size_t used = strlen(detail);
    if (used && used < sizeof detail - 2) strcat(detail, "; ");
    used = strlen(detail);
    va_start(ap, fmt);
    vsnprintf(detail + used, sizeof detail - used, fmt, ap);
    va_end(ap);
    failures++;
}

static int finish(const char *blocked) {
    if (failures) printf("FAIL %s\n", detail);
    else printf("PASS %s\n", blocked);
    fflush(stdout);
    return 0;
}

static int try_read(const char *path) {
    char buf[64];
    int fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n >= 0;
}

/* read_host_file PLANTED: the host's secrets and a file planted outside the jail. */
static int probe_read_host_file(int argc, char **argv) {
    const char *planted = argc > 2 ? argv[2] : "/nonexistent";
    char path[4096];
    const char *direct[] = {"/etc/shadow", "/etc/passwd", "/root/.bashrc", planted, NULL};
    for (int i = 0; direct[i]; i++)
        if (try_read(direct[i])) escaped("read %s", direct[i]);
    snprintf(path, sizeof path, "/proc/1/root%s", planted);
    if (try_read(path)) escaped("read %s", path);
    snprintf(path, sizeof path, "../../../../../../../../..%s", planted);
    if (try_read(path)) escaped("read %s", path);
    snprintf(path, sizeof path, "/hosttmp/%s", strrchr(planted, '/') ? strrchr(planted, '/') + 1 : planted);
    if (try_read(path)) escaped("read %s", path);
    return finish("no host file readable");
}

static int try_create(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/jailcc-probe-%d", dir, getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return 0;
    close(fd);
    unlink(path);
    return 1;
}

/* write_image: the toolchain image must be read-only, whoever we are. */
static int probe_write_image(int argc, char **argv) {
    (void)argc; (void)argv;
    const char *dirs[] = {"/usr", "/usr/bin", "/usr/lib", NULL};
    for (int i = 0; dirs[i]; i++)
        if (try_create(dirs[i])) escaped("created a file in %s", dirs[i]);
    DIR *d = opendir("/usr/bin");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[4096];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/usr/bin/%s", e->d_name);
        int fd = open(path, O_WRONLY | O_APPEND);
        if (fd >= 0) { escaped("opened %s for writing", path); close(fd); break; }
    }
    if (d) closedir(d);
    /* Whatever the uid, the image's mount must say read-only. */
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[4096];
    int seen_usr = 0;
    while (f && fgets(line, sizeof line, f)) {
        char mnt[1024], opts[1024];
        if (sscanf(line, "%*s %*s %*s %*s %1023s %1023s", mnt, opts) != 2) continue;
        if (strcmp(mnt, "/usr") != 0) continue;
        seen_usr = 1;
        if (strncmp(opts, "ro", 2) != 0 || (opts[2] != ',' && opts[2] != 0)) escaped("/usr is mounted %s", opts);
    }
    if (f) fclose(f);
    if (!seen_usr) escaped("no /usr mount found to check");
    return finish("image is read-only");
}

/* write_outside_workdir: only the work dir and /tmp may be written. */
static int probe_write_outside_workdir(int argc, char **argv) {
    (void)argc; (void)argv;
    const char *dirs[] = {"/", "/dev", "/proc", "/proc/sys", "..", NULL};
    for (int i = 0; dirs[i]; i++)
        if (try_create(dirs[i])) escaped("created a file in %s", dirs[i]);
    if (mkdir("/jailcc-probe-dir", 0700) == 0) { escaped("made a directory in /"); rmdir("/jailcc-probe-dir"); }
    if (symlink("/", "/jailcc-probe-link") == 0) { escaped("made a symlink in /"); unlink("/jailcc-probe-link"); }
    return finish("only the work dir and /tmp are writable");
}

/* network PORT ABSTRACT: an empty network namespace: nothing to reach, not even the host's loopback. */
static int probe_network(int argc, char **argv) {
    int port = argc > 2 ? atoi(argv[2]) : 9;
    const char *abstract = argc > 3 ? argv[3] : "jailcc-selftest";
    struct if_nameindex *ifs = if_nameindex();
    for (struct if_nameindex *i = ifs; i && i->if_index; i++) {
        if (strcmp(i->if_name, "lo") != 0) escaped("interface %s visible", i->if_name);
        else {
            struct ifreq req = {0};
            int s = socket(AF_INET, SOCK_DGRAM, 0);
            snprintf(req.ifr_name, IFNAMSIZ, "lo");
            if (s >= 0 && ioctl(s, SIOCGIFFLAGS, &req) == 0 && (req.ifr_flags & IFF_UP))
                escaped("loopback is up");
            if (s >= 0 && !(req.ifr_flags & IFF_UP)) {
                req.ifr_flags |= IFF_UP;
                if (ioctl(s, SIOCSIFFLAGS, &req) == 0) escaped("brought loopback up");
            }
            if (s >= 0) close(s);
        }
    }
    if (ifs) if_freenameindex(ifs);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s >= 0) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) escaped("connected to the host's 127.0.0.1:%d", port);
        close(s);
    }
    s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s >= 0) {
        struct sockaddr_un u = {.sun_family = AF_UNIX};
        strncpy(u.sun_path + 1, abstract, sizeof u.sun_path - 2);
        socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(abstract);
        if (connect(s, (struct sockaddr *)&u, len) == 0) escaped("connected to the host's abstract socket @%s", abstract);
        close(s);
    }
    s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s >= 0) { escaped("opened a raw packet socket"); close(s); }
    return finish("empty network namespace, loopback down");
}

static uid_t status_uid(const char *pid) {
    char path[256], line[512];
    snprintf(path, sizeof path, "/proc/%s/status", pid);
    FILE *f = fopen(path, "r");
    uid_t uid = (uid_t)-1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Uid: %u", &uid) == 1) break;
    if (f) fclose(f);
    return uid;
}

/* host_processes HOSTPID: only the jail's own processes are visible or reachable. */
static int probe_host_processes(int argc, char **argv) {
    int host_pid = argc > 2 ? atoi(argv[2]) : 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    int seen = 0, foreign = 0;
    uid_t me = getuid();
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        seen++;
        if (status_uid(e->d_name) != me) foreign++;
    }
    if (d) closedir(d);
    if (foreign) escaped("%d of %d visible processes are not the jail's", foreign, seen);
    if (seen > 16) escaped("%d processes visible", seen);
    if (host_pid > 16 && kill(host_pid, 0) == 0) escaped("signalled host pid %d", host_pid);
    return finish("own PID namespace: only the jail's processes");
}

/* uid0_caps: not root, no capability in any set, no way to regain them. */
static int probe_uid0_caps(int argc, char **argv) {
    (void)argc; (void)argv;
    uid_t r, e, s;
    gid_t gr, ge, gs;
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    if (!r || !e || !s) escaped("uid 0 (%u/%u/%u)", r, e, s);
    if (!gr || !ge || !gs) escaped("gid 0");
    gid_t groups[64];
    int n = getgroups(64, groups);
    for (int i = 0; i < n; i++)
        if (groups[i] == 0) escaped("in group 0");
    FILE *f = fopen("/proc/self/status", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long v;
        char name[32];
        if (sscanf(line, "Cap%31[^:]: %llx", name, &v) == 2 && v) escaped("Cap%s=%llx", name, v);
        if (sscanf(line, "NoNewPrivs: %llu", &v) == 1 && !v) escaped("NoNewPrivs is 0");
    }
    if (f) fclose(f);
    else escaped("cannot read /proc/self/status");
    if (setuid(0) == 0) escaped("setuid(0) worked");
    if (setgid(0) == 0) escaped("setgid(0) worked");
    return finish("unprivileged uid, no capabilities, no_new_privs");
}

/* setuid_binaries: every mount nosuid; no setuid or setgid file anywhere reachable. */
static int probe_setuid_binaries(int argc, char **argv) {
    (void)argc; (void)argv;
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        char mnt[1024], opts[1024];
        if (sscanf(line, "%*s %*s %*s %*s %1023s %1023s", mnt, opts) != 2) continue;
        if (!strstr(opts, "nosuid") && strcmp(mnt, "/") != 0) escaped("%s is mounted without nosuid", mnt);
        if (!strcmp(mnt, "/") && !strstr(opts, "nosuid")) escaped("/ is mounted without nosuid");
    }
    if (f) fclose(f);
    else escaped("cannot read mountinfo");
    if (setresuid(0, 0, 0) == 0) escaped("setresuid(0) worked");
    return finish("all mounts nosuid");
}

/* exec_writable: nothing a job writes in /tmp can be executed or mapped executable (no library
 * a compiler's loader is led to, no binary of its own); a compile's work dir is mounted the
 * same way (the probe's own is not: it runs from there). */
static int probe_exec_writable(int argc, char **argv) {
    (void)argc; (void)argv;
    int in = open("/proc/self/exe", O_RDONLY);
    int out = open("/tmp/probe-exec", O_WRONLY | O_CREAT | O_TRUNC, 0700);
    char buf[65536];
    ssize_t n;
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n) break;
    if (in >= 0) close(in);
    if (out < 0) return finish("cannot write /tmp");
    close(out);
    int fd = open("/tmp/probe-exec", O_RDONLY);
    void *code = fd >= 0 ? mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    if (code != MAP_FAILED) { escaped("mapped a file written to /tmp executable"); munmap(code, 4096); }
    if (fd >= 0) close(fd);
    pid_t pid = fork();
    if (pid == 0) { execl("/tmp/probe-exec", "probe", NULL); _exit(126); }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 126) escaped("executed a file written to /tmp");
    unlink("/tmp/probe-exec");
    return finish("/tmp is noexec");
}

/* new_userns: a new user namespace would hand us every capability inside it. */
static int probe_new_userns(int argc, char **argv) {
    (void)argc; (void)argv;
    pid_t pid = fork();
    if (pid == 0) _exit(unshare(CLONE_NEWUSER) == 0 ? 0 : 1);
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) escaped("unshare(CLONE_NEWUSER) worked");
    return finish("user namespaces refused (chrooted)");
}

/* mount: no mount, remount or namespace games. */
static int probe_mount(int argc, char **argv) {
    (void)argc; (void)argv;
    mkdir("/tmp/m", 0700);
    if (mount("none", "/tmp/m", "tmpfs", 0, NULL) == 0) { escaped("mounted a tmpfs"); umount("/tmp/m"); }
    if (mount(NULL, "/usr", NULL, MS_REMOUNT | MS_BIND, NULL) == 0) escaped("remounted /usr read-write");
    if (umount2("/proc", MNT_DETACH) == 0) escaped("unmounted /proc");
    if (unshare(CLONE_NEWNS) == 0) escaped("unshare(CLONE_NEWNS) worked");
    if (setns(open("/proc/1/ns/mnt", O_RDONLY), 0) == 0) escaped("setns worked");
    rmdir("/tmp/m");
    return finish("mount and namespace calls refused");
}

/* chroot_escape PLANTED: the classic nested-chroot escape, and the planted file beyond. */
static int probe_chroot_escape(int argc, char **argv) {
    const char *planted = argc > 2 ? argv[2] : "/nonexistent";
    mkdir("/tmp/c", 0700);
    if (chroot("/tmp/c") == 0) {
        escaped("chroot worked");
        for (int i = 0; i < 64; i++) if (chdir("..") != 0) break;
        if (chroot(".") == 0 && try_read(planted)) escaped("read %s after the escape", planted);
    }
    int fd = open("/", O_PATH);
    if (fd >= 0 && fchdir(fd) == 0) {
        for (int i = 0; i < 64; i++) if (chdir("..") != 0) break;
        if (try_read(planted + 1)) escaped("reached %s by ..", planted);
    }
    rmdir("/tmp/c");
    return finish("chroot refused, nothing beyond the root");
}

/* ptrace: the jail's init (pid 1) must not be traceable or readable by the jobs. */
static int probe_ptrace(int argc, char **argv) {
    (void)argc; (void)argv;
    if (ptrace(PTRACE_ATTACH, 1, 0, 0) == 0) {
        escaped("attached to the jail's init");
        waitpid(1, NULL, __WALL);
        ptrace(PTRACE_DETACH, 1, 0, 0);
    }
    if (try_read("/proc/1/environ")) escaped("read /proc/1/environ");
    int mem = open("/proc/1/mem", O_RDONLY);  /* reading offset 0 fails anyway: opening is enough */
    if (mem >= 0) { escaped("opened /proc/1/mem"); close(mem); }
    char target[256];
    if (readlink("/proc/1/fd/0", target, sizeof target) > 0) escaped("read /proc/1/fd");
    return finish("init not traceable");
}

/* devices: no device nodes but the harmless ones, and no way to make any. */
static int probe_devices(int argc, char **argv) {
    (void)argc; (void)argv;
    const char *allowed[] = {"null", "zero", "full", "random", "urandom", NULL};
    DIR *d = opendir("/dev");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        struct stat st;
        char path[512];
        snprintf(path, sizeof path, "/dev/%s", e->d_name);
        if (lstat(path, &st) || !(S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))) continue;
        int ok = 0;
        for (int i = 0; allowed[i]; i++) ok |= !strcmp(allowed[i], e->d_name);
        if (!ok) escaped("device %s present", path);
    }
    if (d) closedir(d);
    const char *dirs[] = {"/tmp", ".", "/dev", NULL};
    for (int i = 0; dirs[i]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/probe-mem", dirs[i]);
        if (mknod(path, S_IFCHR | 0600, makedev(1, 1)) == 0) {
            escaped("mknod /dev/mem twin in %s", dirs[i]);
            int fd = open(path, O_RDONLY);
            if (fd >= 0) { escaped("opened it"); close(fd); }
            unlink(path);
        }
    }
    return finish("no device creation, only null/zero/full/random/urandom");
}

/* device_nodes: /dev holds the real null, zero, full, random and urandom, whatever the host's
 * /dev looks like (they are made from fixed numbers), and each behaves as it should. */
static int probe_device_nodes(int argc, char **argv) {
    (void)argc; (void)argv;
    static const struct { const char *name; unsigned major, minor; } want[] = {
        {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char path[64];
        struct stat st;
        snprintf(path, sizeof path, "/dev/%s", want[i].name);
        if (lstat(path, &st) != 0) escaped("%s missing", path);
        else if (!S_ISCHR(st.st_mode)) escaped("%s is not a character device", path);
        else if (major(st.st_rdev) != want[i].major || minor(st.st_rdev) != want[i].minor)
            escaped("%s is %u:%u, not %u:%u", path, major(st.st_rdev), minor(st.st_rdev),
                    want[i].major, want[i].minor);
    }
    char buf[16];
    int fd = open("/dev/null", O_RDWR);
    if (fd < 0) escaped("cannot open /dev/null: %s", strerror(errno));
    else {
        if (read(fd, buf, sizeof buf) != 0) escaped("/dev/null is not empty");
        if (write(fd, "x", 1) != 1) escaped("writing /dev/null failed");
        close(fd);
    }
    fd = open("/dev/zero", O_RDONLY);
    memset(buf, 1, sizeof buf);
    if (fd < 0 || read(fd, buf, sizeof buf) != (ssize_t)sizeof buf) escaped("cannot read /dev/zero");
    else for (size_t i = 0; i < sizeof buf; i++) if (buf[i]) { escaped("/dev/zero gave non-zero bytes"); break; }
    if (fd >= 0) close(fd);
    fd = open("/dev/full", O_WRONLY);
    if (fd < 0) escaped("cannot open /dev/full: %s", strerror(errno));
    else {
        errno = 0;
        if (write(fd, "x", 1) != -1 || errno != ENOSPC) escaped("writing /dev/full did not fail with ENOSPC");
        close(fd);
    }
    const char *random[] = {"/dev/random", "/dev/urandom", NULL};
    for (int i = 0; random[i]; i++) {
        fd = open(random[i], O_RDONLY);
        memset(buf, 0, sizeof buf);
        int nonzero = 0;
        if (fd >= 0 && read(fd, buf, sizeof buf) == (ssize_t)sizeof buf)
            for (size_t j = 0; j < sizeof buf; j++) nonzero |= buf[j];
        if (!nonzero) escaped("%s gave no random bytes", random[i]);
        if (fd >= 0) close(fd);
    }
    return finish("null, zero, full, random and urandom are the real devices");
}

/* socket_families: only AF_UNIX, AF_INET and AF_INET6; every other family must fail with
 * EAFNOSUPPORT from the seccomp filter, before the kernel's code for it runs (any other answer,
 * EPERM or ENODEV say, means the call reached it). A network namespace holds none of these. */
static int probe_socket_families(int argc, char **argv) {
    (void)argc; (void)argv;
    static const struct { int family, type; const char *name; } refused[] = {
        {AF_VSOCK, SOCK_STREAM, "AF_VSOCK"}, {AF_PACKET, SOCK_RAW, "AF_PACKET"},
        {AF_NETLINK, SOCK_RAW, "AF_NETLINK"}, {AF_ALG, SOCK_SEQPACKET, "AF_ALG"},
        {AF_KEY, SOCK_RAW, "AF_KEY"}, {AF_BLUETOOTH, SOCK_RAW, "AF_BLUETOOTH"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        int sv[2];
        int s = socket(refused[i].family, refused[i].type, 0);
        if (s >= 0) { escaped("opened an %s socket", refused[i].name); close(s); }
        else if (errno != EAFNOSUPPORT) escaped("socket(%s) reached the kernel: %s", refused[i].name, strerror(errno));
        if (socketpair(refused[i].family, refused[i].type, 0, sv) == 0) {
            escaped("made an %s socket pair", refused[i].name);
            close(sv[0]); close(sv[1]);
        } else if (errno != EAFNOSUPPORT) escaped("socketpair(%s) reached the kernel: %s", refused[i].name, strerror(errno));
    }
    /* The family is an int: high bits in the register must not smuggle one past the filter. */
    long s = syscall(SYS_socket, (long)AF_NETLINK | (1L << 32), SOCK_RAW, 0);
    if (s >= 0) { escaped("opened AF_NETLINK with high bits set"); close((int)s); }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) escaped("AF_UNIX refused: %s", strerror(errno));
    else { close(sv[0]); close(sv[1]); }
    return finish("only AF_UNIX, AF_INET and AF_INET6 sockets");
}

/* mount_table HOSTPATH...: /proc/self/mountinfo names no host device, file or directory. */
static int probe_mount_table(int argc, char **argv) {
    const char *tables[] = {"/proc/self/mountinfo", "/proc/self/mounts", "/proc/1/mountinfo", NULL};
    for (int t = 0; tables[t]; t++) {
        FILE *f = fopen(tables[t], "r");
        char line[4096];
        if (!f) { if (t == 0) escaped("cannot read %s", tables[t]); continue; }
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            char source[1024] = "";
            const char *dash = strstr(line, " - ");
            if (t == 1) sscanf(line, "%1023s", source);
            else if (dash) sscanf(dash + 3, "%*s %1023s", source);
            if (!strncmp(source, "/dev/", 5)) escaped("%s names the host device %s", tables[t], source);
            for (int i = 2; i < argc; i++)
                if (argv[i][0] && strstr(line, argv[i])) escaped("%s names %s: %.200s", tables[t], argv[i], line);
        }
        fclose(f);
    }
    return finish("the mount table names nothing of the host");
}

/* keyctl: the launcher's session keyring (and any canary key in it) must be out of reach. */
static int probe_keyctl(int argc, char **argv) {
    const char *canary = argc > 2 ? argv[2] : "jailcc-canary";
    long key = syscall(SYS_request_key, "user", canary, NULL, 0);
    if (key >= 0) escaped("found key %s", canary);
    FILE *f = fopen("/proc/keys", "r");
    char line[512];
    uid_t me = getuid();
    while (f && fgets(line, sizeof line, f)) {
        unsigned uid;
        if (sscanf(line, "%*s %*s %*s %*s %*s %u", &uid) == 1 && uid != me) {
            line[strcspn(line, "\n")] = 0;
            escaped("key of uid %u visible: %.80s", uid, line);
            break;
        }
    }
    if (f) fclose(f);
    return finish("no keys but our own");
}

/* proc_sys_write: /proc/sys and /proc/sysrq-trigger are not writable. */
static int probe_proc_sys_write(int argc, char **argv) {
    (void)argc; (void)argv;
    char name[256] = {0};
    int fd = open("/proc/sys/kernel/hostname", O_RDWR);
    if (fd >= 0) {
        /* Write back the same (UTS-namespaced) value: proves the access, changes nothing. */
        ssize_t n = read(fd, name, sizeof name - 1);
        if (n > 0 && pwrite(fd, name, n, 0) == n) escaped("wrote /proc/sys/kernel/hostname");
        else escaped("opened /proc/sys/kernel/hostname for writing");
        close(fd);
    }
    fd = open("/proc/sysrq-trigger", O_WRONLY);
    if (fd >= 0) { escaped("opened /proc/sysrq-trigger for writing"); close(fd); }
    return finish("/proc/sys read-only");
}

/* memory CAP_MIB: allocate and touch up to CAP_MIB; the jail must stop us first. */
static int probe_memory(int argc, char **argv) {
    long cap = argc > 2 ? atol(argv[2]) : 1024;
    long got = 0;
    for (; got < cap; got++) {
        char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) break;
        memset(p, 1, 1 << 20);
    }
    if (got >= cap) escaped("allocated %ld MiB", got);
    return finish("allocation stopped by the jail's memory limit");
}

/* fork_bomb CAP: keep CAP processes alive at once; the jail must stop us first. */
static int probe_fork_bomb(int argc, char **argv) {
    static pid_t children[4096];
    long cap = argc > 2 ? atol(argv[2]) : 512, alive = 0;
    if (cap > 4096) cap = 4096;
    for (; alive < cap; alive++) {
        pid_t pid = fork();
        if (pid < 0) break;
        if (pid == 0) { sleep(30); _exit(0); }
        children[alive] = pid;
    }
    if (alive >= cap) escaped("%ld processes alive at once", alive);
    for (long i = 0; i < alive; i++) kill(children[i], SIGKILL);
    while (wait(NULL) > 0) { }
    return finish("process count stopped by the jail");
}

/* fill_disk CAP_MIB: write up to CAP_MIB into the work dir; the jail must stop us first. */
static int probe_fill_disk(int argc, char **argv) {
    long cap = argc > 2 ? atol(argv[2]) : 1024, written = 0;
    static char block[1 << 20];
    memset(block, 7, sizeof block);
    int fd = open("fill", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    while (fd >= 0 && written < cap && write(fd, block, sizeof block) == (ssize_t)sizeof block) written++;
    if (fd >= 0) close(fd);
    unlink("fill");
    if (written >= cap) escaped("wrote %ld MiB", written);
    return finish("disk use stopped by the work dir's size");
}

/* sleep SECONDS: outlast the wall clock; the jail must kill us first. */
static int probe_sleep(int argc, char **argv) {
    sleep(argc > 2 ? atoi(argv[2]) : 5);
    escaped("ran past the wall-clock limit");
    return finish("");
}

/* spin SECONDS: burn CPU; the CPU limit must kill us first. */
static int probe_spin(int argc, char **argv) {
    int seconds = argc > 2 ? atoi(argv[2]) : 5;
    while (clock() < (clock_t)seconds * CLOCKS_PER_SEC) { }
    escaped("used %d s of CPU", seconds);
    return finish("");
}

/* spin_children N SECONDS: N children each burn SECONDS of CPU; we exit as soon as they are
 * done, without waiting for them (so our own rusage never counts them). */
static int probe_spin_children(int argc, char **argv) {
    int n = argc > 2 ? atoi(argv[2]) : 2, seconds = argc > 3 ? atoi(argv[3]) : 1;
    int done[2];
    if (pipe(done) != 0) return 2;
    for (int i = 0; i < n; i++)
        if (fork() == 0) {
            struct timespec used;
            do clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &used);
            while (used.tv_sec < seconds);
            if (write(done[1], "x", 1) != 1) _exit(1);
            _exit(0);
        }
    close(done[1]);
    char byte;
    for (int i = 0; i < n; i++)
        if (read(done[0], &byte, 1) != 1) return 2;
    return finish("children spun unwaited");
}

/* flood MIB: write MIB MiB to stdout; the output cap must stop us first. */
static int probe_flood(int argc, char **argv) {
    long cap = argc > 2 ? atol(argv[2]) : 64;
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    for (long i = 0; i < cap; i++)
        if (write(1, block, sizeof block) < 0) return 1;
    fprintf(stderr, "FAIL flooded %ld MiB\n", cap);
    return 0;
}

/* daemon SECONDS: leave a process behind that would outlive the jail. */
static int probe_daemon(int argc, char **argv) {
    int seconds = argc > 2 ? atoi(argv[2]) : 30;
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (fork() == 0) {
            for (int fd = 0; fd < 1024; fd++) close(fd);
            sleep(seconds);
            _exit(0);
        }
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    return finish("daemon started; the host checks that teardown ends it");
}

/* marker NAME SECONDS: plant a file and a process for another jail's probe to look for. */
static int probe_marker(int argc, char **argv) {
    const char *name = argc > 2 ? argv[2] : "jailcc-marker";
    int seconds = argc > 3 ? atoi(argv[3]) : 10;
    int fd = open(name, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
    printf("READY\n");
    fflush(stdout);
    sleep(seconds);
    return 0;
}

/* neighbour MARKER_PATH MARKER_NAME: nothing of another live jail is visible. */
static int probe_neighbour(int argc, char **argv) {
    const char *path = argc > 2 ? argv[2] : "/nonexistent";
    const char *name = argc > 3 ? argv[3] : "jailcc-marker";
    if (access(path, F_OK) == 0) escaped("saw the other jail's file %s", path);
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char file[300], buf[4096];
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || atoi(e->d_name) == getpid()) continue;
        snprintf(file, sizeof file, "/proc/%s/cmdline", e->d_name);
        int fd = open(file, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        for (ssize_t i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
        if (n > 0) { buf[n] = 0; if (strstr(buf, name)) escaped("saw the other jail's process %s", e->d_name); }
        snprintf(file, sizeof file, "/proc/%s/root%s", e->d_name, path);
        if (access(file, F_OK) == 0) escaped("reached the other jail's file via %s", file);
    }
    if (d) closedir(d);
    return finish("other jails invisible");
}

/* leave_files: litter the work dir and /tmp, then lock both, for the next job to find. */
static int probe_leave_files(int argc, char **argv) {
    (void)argc; (void)argv;
    const char *dirs[] = {".", "/tmp", NULL};
    for (int i = 0; dirs[i]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/left-over", dirs[i]);
        int fd = open(path, O_WRONLY | O_CREAT, 0400);
        if (fd >= 0) close(fd);
        snprintf(path, sizeof path, "%s/left-dir", dirs[i]);
        mkdir(path, 0700);
        snprintf(path, sizeof path, "%s/left-dir/inner", dirs[i]);
        fd = open(path, O_WRONLY | O_CREAT, 0400);
        if (fd >= 0) close(fd);
        snprintf(path, sizeof path, "%s/left-dir", dirs[i]);
        chmod(path, 0500);
        snprintf(path, sizeof path, "%s/left-link", dirs[i]);
        symlink("/tmp", path);
        chmod(dirs[i], 0500);
    }
    return finish("files left for the next job");
}

/* check_clean: nothing of an earlier job in the work dir (but our own probe) or /tmp. */
static int probe_check_clean(int argc, char **argv) {
    (void)argc; (void)argv;
    const char *dirs[] = {".", "/tmp", NULL};
    for (int i = 0; dirs[i]; i++) {
        DIR *d = opendir(dirs[i]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (i == 0 && !strcmp(e->d_name, "probe")) continue;
            escaped("found %s/%s from an earlier job", dirs[i], e->d_name);
        }
        if (d) closedir(d);
        else escaped("cannot list %s", dirs[i]);
    }
    return finish("the job started clean");
}

struct probe { const char *name; int (*fn)(int, char **); };
static const struct probe probes[] = {
    {"read_host_file", probe_read_host_file}, {"write_image", probe_write_image},
    {"write_outside_workdir", probe_write_outside_workdir}, {"network", probe_network},
    {"host_processes", probe_host_processes}, {"uid0_caps", probe_uid0_caps},
    {"setuid_binaries", probe_setuid_binaries}, {"exec_writable", probe_exec_writable},
    {"new_userns", probe_new_userns},
    {"mount", probe_mount}, {"chroot_escape", probe_chroot_escape}, {"ptrace", probe_ptrace},
    {"devices", probe_devices}, {"keyctl", probe_keyctl}, {"proc_sys_write", probe_proc_sys_write},
    {"memory", probe_memory}, {"fork_bomb", probe_fork_bomb}, {"fill_disk", probe_fill_disk},
    {"sleep", probe_sleep}, {"spin", probe_spin}, {"flood", probe_flood}, {"daemon", probe_daemon},
    {"marker", probe_marker}, {"neighbour", probe_neighbour}, {"leave_files", probe_leave_files},
    {"check_clean", probe_check_clean}, {"spin_children", probe_spin_children},
    {"device_nodes", probe_device_nodes}, {"socket_families", probe_socket_families},
    {"mount_table", probe_mount_table}, {NULL, NULL},
};

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: probe NAME [ARGS...]\n"); return 2; }
    for (const struct probe *p = probes; p->name; p++)
        if (!strcmp(p->name, argv[1])) return p->fn(argc, argv);
    fprintf(stderr, "probe: unknown probe %s\n", argv[1]);
    return 2;
}
