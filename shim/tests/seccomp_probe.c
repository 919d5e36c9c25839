#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define HIGH (1UL << 32)

static void report(const char *name, long rc) {
    printf("%s %d\n", name, rc < 0 ? errno : 0);
}

static void closing(const char *name, long rc) { report(name, rc); if (rc >= 0) close(rc); }

/* Plants setuid/setgid files in DIR every way the kernel offers. */
static int setid(const char *dir) {
    char p[4096], buf[65536];
    long rc;
    ssize_t n;
    int dfd = open(dir, O_DIRECTORY | O_RDONLY);
    snprintf(p, sizeof p, "%s/planted", dir);
    int in = open("/proc/self/exe", O_RDONLY);
    int out = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (dfd < 0 || in < 0 || out < 0) { perror("setup"); return 2; }
    while ((n = read(in, buf, sizeof buf)) > 0) if (write(out, buf, n) != n) return 3;
    errno = 0; rc = chmod(p, 06755); report("chmod_6755", rc);
    errno = 0; rc = chmod(p, 02755); report("chmod_2755", rc);
    errno = 0; rc = fchmod(out, 04755); report("fchmod_4755", rc);
    errno = 0; rc = syscall(SYS_fchmodat, dfd, "planted", 06755); report("fchmodat_6755", rc);
    errno = 0; rc = syscall(452 /* fchmodat2 */, dfd, "planted", 04755, 0); report("fchmodat2_4755", rc);
    /* The last word on planted: a plain executable mode still works. */
    errno = 0; rc = chmod(p, 0755); report("chmod_0755", rc);
    close(out);
    snprintf(p, sizeof p, "%s/open", dir);
    errno = 0; rc = syscall(SYS_open, p, O_WRONLY | O_CREAT | O_EXCL, 04755); closing("open_creat_4755", rc);
    errno = 0; rc = syscall(SYS_openat, dfd, "openat", O_WRONLY | O_CREAT | O_EXCL, 02755); closing("openat_creat_2755", rc);
    snprintf(p, sizeof p, "%s/creat", dir);
    errno = 0; rc = syscall(SYS_creat, p, 06755); closing("creat_6755", rc);
    snprintf(p, sizeof p, "%s/mkdir", dir);
    errno = 0; rc = syscall(SYS_mkdir, p, 02755); report("mkdir_2755", rc);
    errno = 0; rc = syscall(SYS_mkdirat, dfd, "mkdirat", 02755); report("mkdirat_2755", rc);
    snprintf(p, sizeof p, "%s/mknod", dir);
    errno = 0; rc = syscall(SYS_mknod, p, S_IFREG | 04755, 0); report("mknod_4755", rc);
    errno = 0; rc = syscall(SYS_mknodat, dfd, "mknodat", S_IFREG | 02755, 0); report("mknodat_2755", rc);
    struct open_how how = { .flags = O_WRONLY | O_CREAT | O_EXCL, .mode = 04755 };
    errno = 0; rc = syscall(SYS_openat2, dfd, "openat2", &how, sizeof how); closing("openat2_creat_4755", rc);
    return 0;
}

/* Takes stdin (a terminal nobody controls) as controlling terminal and pushes input into it. */
static int tty(void) {
    pid_t p = fork();
    if (p == 0) {
        long rc;
        errno = 0; rc = setsid(); report("setsid", rc);
        errno = 0; rc = ioctl(0, TIOCSCTTY, 0); report("tty_sctty_stdin", rc);
        /* A copy under another number is not refused: the filter cannot tell copies apart. */
        int copy = fcntl(0, F_DUPFD, 10);
        errno = 0; rc = ioctl(copy, TIOCSCTTY, 0); report("tty_sctty_copy", rc);
        const char *cmd = "echo INJECTED\n";
        int sti = 0;
        for (const char *c = cmd; *c; c++) {
            errno = 0;
            if (ioctl(0, TIOCSTI, c) < 0) { sti = errno; break; }
        }
        printf("tty_sti %d\n", sti);
        errno = 0; rc = ioctl(copy, TIOCSTI, "x"); report("tty_sti_copy", rc);
        errno = 0; rc = syscall(SYS_ioctl, 0, HIGH | TIOCSTI, "y"); report("tty_sti_high", rc);
        fflush(stdout);
        _exit(0);
    }
    int st = 0;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 4;
}

int main(int argc, char **argv) {
    long rc;
    if (argc > 2 && strcmp(argv[1], "setid") == 0) return setid(argv[2]);
    if (argc > 1 && strcmp(argv[1], "tty") == 0) return tty();
    errno = 0; rc = syscall(SYS_ptrace, 3 /*PTRACE_PEEKUSER*/, 999999999, 0, 0); report("ptrace", rc);
    errno = 0; rc = syscall(SYS_process_vm_readv, getpid(), 0, 0, 0, 0, 0); report("process_vm_readv", rc);
    errno = 0; rc = syscall(SYS_io_uring_setup, 1, 0); report("io_uring_setup", rc);
    errno = 0; rc = syscall(SYS_bpf, 9999, 0, 0); report("bpf", rc);
    errno = 0; rc = syscall(SYS_perf_event_open, 0, 0, -1, -1, 0); report("perf_event_open", rc);
    errno = 0; rc = syscall(SYS_userfaultfd, 0); report("userfaultfd", rc);
    errno = 0; rc = syscall(SYS_kexec_file_load, -1, -1, 0, 0, 0); report("kexec_file_load", rc);
    errno = 0; rc = syscall(SYS_finit_module, -1, "", 0); report("finit_module", rc);
    errno = 0; rc = syscall(SYS_delete_module, "agentcell_none", 0); report("delete_module", rc);
    errno = 0; rc = syscall(SYS_mount, "none", "/agentcell-none", "tmpfs", 0, 0); report("mount", rc);
    errno = 0; rc = syscall(SYS_umount2, "/agentcell-none", 0); report("umount2", rc);
    errno = 0; rc = syscall(SYS_pivot_root, "/agentcell-none", "/agentcell-none"); report("pivot_root", rc);
    errno = 0; rc = syscall(SYS_fsopen, "tmpfs", 0); report("fsopen", rc);
    errno = 0; rc = syscall(SYS_open_tree, -1, "/agentcell-none", 0); report("open_tree", rc);
    errno = 0; rc = syscall(SYS_setns, -1, 0); report("setns", rc);
    errno = 0; rc = syscall(SYS_open_by_handle_at, -1, 0, 0); report("open_by_handle_at", rc);
    errno = 0; rc = syscall(SYS_keyctl, 0 /*KEYCTL_GET_KEYRING_ID*/, -3 /*session*/, 0); report("keyctl", rc);
    errno = 0; rc = syscall(SYS_add_key, "user", "agentcell", "x", 1, -3); report("add_key", rc);
    errno = 0; rc = syscall(SYS_clone3, 0, 0); report("clone3", rc);
    {
        pid_t p = fork();
        if (p == 0) { _exit(unshare(CLONE_NEWUSER) == 0 ? 0 : errno); }
        int st = 0; waitpid(p, &st, 0);
        printf("unshare_newuser %d\n", WEXITSTATUS(st));
    }
    errno = 0; rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (rc == 0) _exit(0);
    if (rc > 0) waitpid(rc, 0, 0);
    report("clone_newuser", rc);
    errno = 0; rc = socket(40 /*AF_VSOCK*/, SOCK_STREAM, 0); report("socket_vsock", rc);
    errno = 0; rc = socket(AF_PACKET, SOCK_RAW, 0); report("socket_packet", rc);
    /* The kernel reads socket's arguments as ints: high bits must not get past the filter. */
    errno = 0; rc = syscall(SYS_socket, HIGH | 40, SOCK_STREAM, 0); closing("socket_vsock_high", rc);
    errno = 0; rc = syscall(SYS_socket, HIGH | AF_PACKET, SOCK_RAW, 0); closing("socket_packet_high", rc);
    errno = 0; rc = socket(AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT); closing("netlink_uevent", rc);
    errno = 0; rc = syscall(SYS_socket, AF_NETLINK, SOCK_RAW, HIGH | NETLINK_KOBJECT_UEVENT); closing("netlink_uevent_high", rc);
    errno = 0; rc = syscall(SYS_socket, HIGH | AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT); closing("netlink_uevent_family_high", rc);
    errno = 0; rc = socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT); closing("netlink_audit", rc);
    errno = 0; rc = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC); closing("netlink_generic", rc);
    errno = 0; rc = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER); closing("netlink_netfilter", rc);
    errno = 0; rc = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE); closing("netlink_route", rc);
    errno = 0; rc = socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG); closing("netlink_sock_diag", rc);
    {
        /* Not terminals: outside the kernel answers ENOTTY, so EPERM inside is the filter. */
        int nul = open("/dev/null", O_RDWR);
        char sel[8] = {2};
        struct termios t;
        errno = 0; rc = ioctl(nul, TIOCSTI, "x"); report("ioctl_tiocsti", rc);
        errno = 0; rc = syscall(SYS_ioctl, nul, HIGH | TIOCSTI, "x"); report("ioctl_tiocsti_high", rc);
        errno = 0; rc = ioctl(nul, TIOCLINUX, sel); report("ioctl_tioclinux", rc);
        errno = 0; rc = ioctl(1, TIOCSCTTY, 0); report("ioctl_tiocscty_stdout", rc);
        errno = 0; rc = ioctl(nul, TCGETS, &t); report("ioctl_tcgets", rc);
        close(nul);
    }
    errno = 0; rc = syscall(SYS_landlock_create_ruleset, 0, 0, 1 /*VERSION*/); report("landlock_create_ruleset", rc);
    return 0;
}
