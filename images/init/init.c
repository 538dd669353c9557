/*
 * PID 1 of every lab guest: mount the pseudo filesystems, bring up the network and the SSH server
 * when QEMU gave the guest a NIC, run the workload named on the kernel command line, report its
 * outcome on the console in two protocol lines, and power off. With lab.hold=1 and no workload it
 * stays up instead, for a host that runs workloads over SSH.
 *
 * The host reads the serial console, so the protocol lines are each formatted in full and
 * handed to the console in one write(2): stdio buffering could split them, and the host must
 * never see half a line from us glued to a kernel message.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKLOAD_DIR "/lab/workloads"
#define WORKLOAD_ARG_PREFIX "lab.arg."
#define WORKLOAD_NAME_PREFIX "lab.workload="
#define HOLD_PARAM "lab.hold=1"
#define MAX_WORKLOAD_ARGS 64

/* QEMU's user-mode network has fixed addresses; the host's forwarded port arrives from 10.0.2.2. */
#define NIC "eth0"
#define NIC_ADDRESS "10.0.2.15"
#define NIC_NETMASK "255.255.255.0"
#define GATEWAY "10.0.2.2"

/* The image's dropbear and its host key (lab/src/image/). */
#define DROPBEAR "/usr/sbin/dropbear"
#define HOST_KEY "/etc/dropbear/dropbear_ed25519_host_key"
#define SSH_PORT "22"
#define DROPBEAR_LOG "/run/dropbear.log"

struct outcome {
	const char *status;
	int exit_code;
	int signal;
	long long elapsed_ms;
	char detail[64];
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	int len = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (len < 0)
		return;
	if ((size_t)len >= sizeof(line))
		len = sizeof(line) - 1;

	/* One write on the console tty takes the whole line; the loop only guards EINTR and short writes. */
	for (int done = 0; done < len;) {
		ssize_t n = write(STDOUT_FILENO, line + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		done += n;
	}
}

static void mount_fs(const char *source, const char *target, const char *type, int required)
{
	if (mkdir(target, 0755) < 0 && errno != EEXIST && required)
		say("lab-init: mkdir %s: %s\n", target, strerror(errno));
	/* EBUSY: the kernel (CONFIG_DEVTMPFS_MOUNT) or an earlier boot stage got there first. */
	if (mount(source, target, type, 0, NULL) < 0 && errno != EBUSY && required)
		say("lab-init: mount %s on %s: %s\n", type, target, strerror(errno));
}

/* The kernel opens /dev/console for us only if the initramfs has that node; do not rely on it. */
static void attach_console(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	for (int std_fd = STDIN_FILENO; std_fd <= STDERR_FILENO; std_fd++)
		if (fd != std_fd)
			dup2(fd, std_fd);
	if (fd > STDERR_FILENO)
		close(fd);
}

static void read_cmdline(char *buf, size_t size)
{
	buf[0] = '\0';
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		say("lab-init: open /proc/cmdline: %s\n", strerror(errno));
		return;
	}
	size_t len = 0;
	while (len < size - 1) {
		ssize_t n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += n;
	}
	buf[len] = '\0';
	close(fd);
}

/*
 * Splits the command line in place. argv[0] is left for the workload name; each lab.arg.KEY=VALUE
 * becomes "--KEY=VALUE" in command-line order; *hold says whether lab.hold=1 is there. Returns the
 * workload name, or NULL if none is given.
 */
static const char *parse_cmdline(char *cmdline, char **argv, int *argc, int *hold)
{
	const char *workload = NULL;

	*argc = 1;
	*hold = 0;
	for (char *save, *token = strtok_r(cmdline, " \t\n", &save); token;
	     token = strtok_r(NULL, " \t\n", &save)) {
		if (strncmp(token, WORKLOAD_NAME_PREFIX, strlen(WORKLOAD_NAME_PREFIX)) == 0) {
			workload = token + strlen(WORKLOAD_NAME_PREFIX);
		} else if (strcmp(token, HOLD_PARAM) == 0) {
			*hold = 1;
		} else if (strncmp(token, WORKLOAD_ARG_PREFIX, strlen(WORKLOAD_ARG_PREFIX)) == 0) {
			if (*argc >= MAX_WORKLOAD_ARGS) {
				say("lab-init: more than %d lab.arg.* parameters, ignoring %s\n",
				    MAX_WORKLOAD_ARGS - 1, token);
				continue;
			}
			/* "lab.arg." is 8 bytes, so "--" fits in place over its tail. */
			char *arg = token + strlen(WORKLOAD_ARG_PREFIX) - 2;
			arg[0] = '-';
			arg[1] = '-';
			argv[(*argc)++] = arg;
		}
	}
	argv[*argc] = NULL;
	return workload;
}

static int valid_workload_name(const char *name)
{
	return name[0] != '\0' && name[0] != '.' && strchr(name, '/') == NULL;
}

static int set_address(int fd, unsigned long request, const char *interface, const char *address)
{
	struct ifreq ifr = { 0 };
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", interface);
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, address, &sin->sin_addr);
	return ioctl(fd, request, &ifr);
}

/* Address, netmask, up. On failure returns -1 with errno set and *step naming the failed call. */
static int configure_interface(int fd, const char *interface, const char *address, const char *netmask,
			       const char **step)
{
	struct ifreq ifr = { 0 };

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", interface);
	*step = "SIOCSIFADDR";
	if (set_address(fd, SIOCSIFADDR, interface, address) < 0)
		return -1;
	*step = "SIOCSIFNETMASK";
	if (set_address(fd, SIOCSIFNETMASK, interface, netmask) < 0)
		return -1;
	*step = "SIOCGIFFLAGS";
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return -1;
	ifr.ifr_flags |= IFF_UP;
	*step = "SIOCSIFFLAGS";
	return ioctl(fd, SIOCSIFFLAGS, &ifr);
}

enum nic { NIC_ABSENT, NIC_UP, NIC_FAILED };

/*
 * lo, and the NIC if QEMU gave the guest one, with the user-mode network's addresses. Plain ioctls
 * rather than busybox's ip: init needs nothing else from the image.
 */
static enum nic bring_up_network(void)
{
	const char *step;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		say("lab-init: no IPv4 socket (%s): no network, no SSH\n", strerror(errno));
		return NIC_FAILED;
	}
	if (configure_interface(fd, "lo", "127.0.0.1", "255.0.0.0", &step) < 0)
		say("lab-init: lo: %s: %s\n", step, strerror(errno));

	enum nic nic = NIC_UP;
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", NIC);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
		/* ENODEV: QEMU was started without a NIC, as for every workload run over the console. */
		if (errno == ENODEV) {
			nic = NIC_ABSENT;
		} else {
			say("lab-init: %s: SIOCGIFINDEX: %s\n", NIC, strerror(errno));
			nic = NIC_FAILED;
		}
	} else if (configure_interface(fd, NIC, NIC_ADDRESS, NIC_NETMASK, &step) < 0) {
		say("lab-init: %s: %s: %s\n", NIC, step, strerror(errno));
		nic = NIC_FAILED;
	} else {
		struct rtentry route = { 0 };
		struct sockaddr_in *gateway = (struct sockaddr_in *)&route.rt_gateway;
		((struct sockaddr_in *)&route.rt_dst)->sin_family = AF_INET;
		((struct sockaddr_in *)&route.rt_genmask)->sin_family = AF_INET;
		gateway->sin_family = AF_INET;
		inet_pton(AF_INET, GATEWAY, &gateway->sin_addr);
		route.rt_flags = RTF_UP | RTF_GATEWAY;
		/* Not fatal: the host's forwarded connections come from the gateway, which is on the link. */
		if (ioctl(fd, SIOCADDRT, &route) < 0)
			say("lab-init: default route via %s: %s\n", GATEWAY, strerror(errno));
	}
	close(fd);
	return nic;
}

/* The last line of a short log file (as much as fits), without its newline; empty if none. */
static void last_line(const char *path, char *line, size_t size)
{
	ssize_t n = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		n = read(fd, line, size - 1);
		close(fd);
	}
	if (n < 0)
		n = 0;
	while (n > 0 && line[n - 1] == '\n')
		n--;
	line[n] = '\0';
	char *last = strrchr(line, '\n');
	if (last)
		memmove(line, last + 1, strlen(last + 1) + 1);
}

/*
 * Starts dropbear: public-key logins only (-s), the image's fixed host key (-r; never -R, the host
 * knows that key in advance), messages to stderr (-E), which is DROPBEAR_LOG: with -E dropbear
 * keeps stderr when it goes into the background and logs every login there, and the console is
 * for the host to parse. It opens its listening socket, then forks into the background and its
 * first process exits 0: that exit is the sign it is ready, and the daemon is an orphan init
 * reaps like any other. Returns 0 when dropbear is listening; otherwise says why on the console.
 */
static int start_ssh_server(void)
{
	char *argv[] = { DROPBEAR, "-s", "-E", "-p", SSH_PORT, "-r", HOST_KEY, "-P", "/run/dropbear.pid", NULL };
	char *envp[] = { NULL };

	pid_t pid = fork();
	if (pid < 0) {
		say("lab-init: fork for %s: %s\n", DROPBEAR, strerror(errno));
		return -1;
	}
	if (pid == 0) {
		/* Close-on-exec: only the copies dup2 makes reach dropbear, and from it every session. */
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		int log = open(DROPBEAR_LOG, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (null < 0 || log < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(log, STDOUT_FILENO) < 0 ||
		    dup2(log, STDERR_FILENO) < 0) {
			say("lab-init: cannot point %s's output at %s: %s\n", DROPBEAR, DROPBEAR_LOG, strerror(errno));
			_exit(127);
		}
		execve(DROPBEAR, argv, envp);
		say("lab-init: exec %s: %s\n", DROPBEAR, strerror(errno));
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			say("lab-init: wait for %s: %s\n", DROPBEAR, strerror(errno));
			return -1;
		}
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	char why[1024];
	last_line(DROPBEAR_LOG, why, sizeof(why));
	if (WIFSIGNALED(status))
		say("lab-init: %s was killed by signal %d before it listened: %s\n", DROPBEAR, WTERMSIG(status), why);
	else
		say("lab-init: %s exited with status %d before it listened: %s\n", DROPBEAR, WEXITSTATUS(status), why);
	return -1;
}

/* sync and reboot are system calls, safe in a signal handler. */
static void power_off_now(int signo)
{
	(void)signo;
	sync();
	reboot(RB_POWER_OFF);
}

/*
 * lab.hold=1: the guest stays up for the host's SSH sessions, init reaping the orphans they leave.
 * busybox's poweroff, halt and reboot signal PID 1 (SIGUSR2, SIGUSR1, SIGTERM): all three power
 * off, as does `poweroff -f` (the kernel directly) or killing QEMU.
 */
static void hold(void) __attribute__((noreturn));
static void hold(void)
{
	struct sigaction action = { .sa_handler = power_off_now };
	sigaction(SIGUSR1, &action, NULL);
	sigaction(SIGUSR2, &action, NULL);
	sigaction(SIGTERM, &action, NULL);
	for (;;) {
		/* ECHILD: nothing left to reap, and nothing can become our child any more. */
		if (wait(NULL) < 0 && errno == ECHILD)
			pause();
	}
}

static long long monotonic_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec * 1000LL + now.tv_nsec / 1000000;
}

static void classify_wait_status(int wait_status, struct outcome *out)
{
	if (WIFSIGNALED(wait_status)) {
		out->status = "fail";
		out->signal = WTERMSIG(wait_status);
		snprintf(out->detail, sizeof(out->detail), "killed-by-signal-%d", out->signal);
		return;
	}
	out->exit_code = WEXITSTATUS(wait_status);
	switch (out->exit_code) {
	case 0:
		out->status = "pass";
		snprintf(out->detail, sizeof(out->detail), "ok");
		break;
	case 77:
		out->status = "skip";
		snprintf(out->detail, sizeof(out->detail), "skip");
		break;
	case 2:
		out->status = "error";
		snprintf(out->detail, sizeof(out->detail), "usage");
		break;
	default:
		out->status = "fail";
		snprintf(out->detail, sizeof(out->detail), "exit-%d", out->exit_code);
		break;
	}
}

static void run_workload(const char *name, char **argv, int cpus, struct outcome *out)
{
	char path[256], cpus_env[32];
	char *envp[] = { cpus_env, NULL };

	snprintf(path, sizeof(path), "%s/%s", WORKLOAD_DIR, name);
	snprintf(cpus_env, sizeof(cpus_env), "LAB_CPUS=%d", cpus);
	argv[0] = (char *)name;

	/* The child reports a failed execv through this close-on-exec pipe; EOF means it ran. */
	int exec_error_pipe[2];
	if (pipe2(exec_error_pipe, O_CLOEXEC) < 0) {
		snprintf(out->detail, sizeof(out->detail), "pipe-%s", strerrorname_np(errno));
		return;
	}

	long long started_ms = monotonic_ms();
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(out->detail, sizeof(out->detail), "fork-%s", strerrorname_np(errno));
		close(exec_error_pipe[0]);
		close(exec_error_pipe[1]);
		return;
	}
	if (pid == 0) {
		execve(path, argv, envp);
		int exec_errno = errno;
		ssize_t ignored = write(exec_error_pipe[1], &exec_errno, sizeof(exec_errno));
		(void)ignored;
		_exit(127);
	}
	close(exec_error_pipe[1]);

	int exec_errno = 0;
	ssize_t n;
	do
		n = read(exec_error_pipe[0], &exec_errno, sizeof(exec_errno));
	while (n < 0 && errno == EINTR);
	close(exec_error_pipe[0]);

	/* As PID 1 we inherit every orphan in the guest: reap them all, stop at the workload itself. */
	int wait_status = 0;
	for (;;) {
		pid_t reaped = wait(&wait_status);
		if (reaped == pid)
			break;
		if (reaped < 0 && errno != EINTR) {
			snprintf(out->detail, sizeof(out->detail), "wait-%s", strerrorname_np(errno));
			return;
		}
	}
	out->elapsed_ms = monotonic_ms() - started_ms;

	if (n == sizeof(exec_errno)) {
		if (exec_errno == ENOENT)
			snprintf(out->detail, sizeof(out->detail), "no-such-workload");
		else
			snprintf(out->detail, sizeof(out->detail), "exec-%s", strerrorname_np(exec_errno));
		return;
	}
	classify_wait_status(wait_status, out);
}

int main(void)
{
	mount_fs("devtmpfs", "/dev", "devtmpfs", 1);
	attach_console();
	mount_fs("proc", "/proc", "proc", 1);
	mount_fs("sysfs", "/sys", "sysfs", 1);
	/* Optional: LKDTM workloads need debugfs, cgroup workloads need cgroup2; others run without. */
	mount_fs("debugfs", "/sys/kernel/debug", "debugfs", 0);
	mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", 0);

	static char cmdline[8192];
	char *workload_argv[MAX_WORKLOAD_ARGS + 1];
	int workload_argc, hold_requested;
	read_cmdline(cmdline, sizeof(cmdline));
	const char *workload = parse_cmdline(cmdline, workload_argv, &workload_argc, &hold_requested);

	/* Interactive SSH sessions (ssh -t) allocate their terminals there. */
	mount_fs("devpts", "/dev/pts", "devpts", 1);
	const char *ssh = "none";
	if (bring_up_network() == NIC_UP && start_ssh_server() == 0)
		ssh = SSH_PORT;

	struct utsname uts;
	if (uname(&uts) < 0) {
		snprintf(uts.machine, sizeof(uts.machine), "unknown");
		snprintf(uts.release, sizeof(uts.release), "unknown");
	}
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	say("LAB-READY arch=%s cpus=%ld kernel=%s workload=%s ssh=%s\n", uts.machine, cpus, uts.release,
	    workload ? workload : "none", ssh);

	if (!workload && hold_requested)
		hold();

	struct outcome out = { .status = "error", .exit_code = -1 };
	if (!workload)
		snprintf(out.detail, sizeof(out.detail), "no-workload");
	else if (!valid_workload_name(workload))
		snprintf(out.detail, sizeof(out.detail), "bad-workload-name");
	else
		run_workload(workload, workload_argv, (int)cpus, &out);

	say("LAB-RESULT workload=%s status=%s exit=%d signal=%d elapsed_ms=%lld detail=%s\n",
	    workload ? workload : "none", out.status, out.exit_code, out.signal, out.elapsed_ms,
	    out.detail);

	sync();
	reboot(RB_POWER_OFF);
	say("lab-init: power-off failed (%s); waiting for the host to stop the guest\n",
	    strerror(errno));
	for (;;)
		pause();
}
