/* The initramfs /init of scripts/vm-systemd: make this machine's own Debian 12 the VM's root and
 * hand over to systemd, as a stock boot would.
 *
 * Loads the kernel modules listed in /modules/order (names of /modules/NAME.ko, dependencies
 * first), mounts the host's "/" (9p, tag "hostroot", read-only) under an overlay whose upper
 * layer is a tmpfs and whose top lower layer is /extra from this initramfs (the check and its
 * units, an empty fstab), with an empty tmpfs on /tmp, moves it to "/" and execs
 * /lib/systemd/systemd with its arguments. Nothing the VM writes reaches the host. Any failure
 * is printed and the VM powers off (no panic loop).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void fail(const char *what) {
    printf("FAIL vm init: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    _exit(1);
}

static void load_modules(void) {
    char names[4096], path[512];
    int list = open("/modules/order", O_RDONLY);
    if (list < 0) fail("/modules/order");
    ssize_t got = read(list, names, sizeof names - 1);
    if (got < 0) fail("read /modules/order");
    names[got] = '\0';
    close(list);
    for (char *name = strtok(names, "\n"); name; name = strtok(NULL, "\n")) {
        snprintf(path, sizeof path, "/modules/%s.ko", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(path);
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) fail(path);
        close(fd);
    }
}

int main(int argc, char **argv) {
    (void)argc;
    mkdir("/dev", 0755);
    mkdir("/proc", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY) fail("mount /dev");
    int console = open("/dev/console", O_RDWR);
    if (console >= 0) {
        dup2(console, 1);
        dup2(console, 2);
    }
    load_modules();
    mkdir("/lower", 0755);
    mkdir("/rw", 0755);
    mkdir("/newroot", 0755);
    if (mount("hostroot", "/lower", "9p", MS_RDONLY,
              "trans=virtio,version=9p2000.L,cache=loose,msize=524288") != 0)
        fail("mount the host's root (9p)");
    if (mount("jailcc-vm", "/rw", "tmpfs", 0, "mode=0755") != 0) fail("mount /rw");
    mkdir("/rw/upper", 0755);
    mkdir("/rw/work", 0755);
    if (mount("overlay", "/newroot", "overlay", 0,
              "lowerdir=/extra:/lower,upperdir=/rw/upper,workdir=/rw/work") != 0)
        fail("mount the overlay root");
    /* An empty /tmp, as after a reboot: the host's would be wiped file by file through the
     * overlay by systemd-tmpfiles at boot (tmp.conf), which takes long with a busy /tmp. */
    if (mount("tmpfs", "/newroot/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
        fail("mount /tmp");
    if (mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) != 0) fail("move /dev");
    if (chdir("/newroot") != 0) fail("chdir /newroot");
    if (mount(".", "/", NULL, MS_MOVE, NULL) != 0) fail("move the new root to /");
    if (chroot(".") != 0 || chdir("/") != 0) fail("chroot");
    argv[0] = "/lib/systemd/systemd";
    execv(argv[0], argv);
    fail("exec /lib/systemd/systemd");
    return 1;
}
