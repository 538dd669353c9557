/*
 * PID 1 of every lab guest: mount the pseudo filesystems, run the workload named on the kernel
 * command line, report its outcome on the console in two protocol lines, and power off.
 *
 * The host reads the serial console, so the protocol lines are each formatted in full and
 * handed to the console in one write(2): stdio buffering could split them, and the host must
 * never see half a line from us glued to a kernel message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKLOAD_DIR "/lab/workloads"
#define WORKLOAD_ARG_PREFIX "lab.arg."
#define WORKLOAD_NAME_PREFIX "lab.workload="
#define MAX_WORKLOAD_ARGS 64

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
 * becomes "--KEY=VALUE" in command-line order. Returns the workload name, or NULL if none is given.
 */
static const char *parse_cmdline(char *cmdline, char **argv, int *argc)
{
	const char *workload = NULL;

	*argc = 1;
	for (char *save, *token = strtok_r(cmdline, " \t\n", &save); token;
	     token = strtok_r(NULL, " \t\n", &save)) {
		if (strncmp(token, WORKLOAD_NAME_PREFIX, strlen(WORKLOAD_NAME_PREFIX)) == 0) {
			workload = token + strlen(WORKLOAD_NAME_PREFIX);
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
	int workload_argc;
	read_cmdline(cmdline, sizeof(cmdline));
	const char *workload = parse_cmdline(cmdline, workload_argv, &workload_argc);

	struct utsname uts;
	if (uname(&uts) < 0) {
		snprintf(uts.machine, sizeof(uts.machine), "unknown");
		snprintf(uts.release, sizeof(uts.release), "unknown");
	}
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	say("LAB-READY arch=%s cpus=%ld kernel=%s workload=%s\n", uts.machine, cpus, uts.release,
	    workload ? workload : "none");

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
