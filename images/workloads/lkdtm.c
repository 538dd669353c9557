/*
 * lkdtm: breaks the kernel on purpose through LKDTM's provoke-crash/DIRECT, so the lab can prove
 * it notices a lockup, a hung task or a panic before it trusts a pass.
 *
 * The write happens in a child process: for HARDLOCKUP, SOFTLOCKUP and HUNG_TASK it never returns,
 * and this process stays asleep in user space meanwhile, so other CPUs keep running and the
 * kernel's detectors can see and report the stuck one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEBUGFS "/sys/kernel/debug"
#define LKDTM_DIRECT DEBUGFS "/provoke-crash/DIRECT"
#define POLL_INTERVAL_MS 100L

/* Child exit codes, so the parent can tell the workload's own outcome from the write's. */
#define WRITE_RETURNED 0
#define WRITE_FAILED 1
#define WRITE_REJECTED 2

static int parse_args(int argc, char **argv, const char **crash, long *wait_s)
{
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--crash=", strlen("--crash=")) == 0) {
			*crash = argv[i] + strlen("--crash=");
		} else if (strncmp(argv[i], "--wait=", strlen("--wait=")) == 0) {
			const char *value = argv[i] + strlen("--wait=");
			char *end;
			errno = 0;
			*wait_s = strtol(value, &end, 10);
			if (errno || end == value || *end != '\0' || *wait_s < 1) {
				fprintf(stderr, "lkdtm: bad value in '%s' (want seconds >= 1)\n", argv[i]);
				return -1;
			}
		} else {
			fprintf(stderr, "lkdtm: unknown argument '%s' (known: --crash=TYPE --wait=N)\n",
				argv[i]);
			return -1;
		}
	}
	if (!*crash || !**crash) {
		fprintf(stderr, "lkdtm: --crash=TYPE is required (e.g. HARDLOCKUP, SOFTLOCKUP, "
				"HUNG_TASK, BUG, WARNING, PANIC, EXCEPTION)\n");
		return -1;
	}
	return 0;
}

static int open_lkdtm(void)
{
	int fd = open(LKDTM_DIRECT, O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		/* The lab's init mounts debugfs, but do not depend on who started us. */
		mount("debugfs", DEBUGFS, "debugfs", 0, NULL);
		fd = open(LKDTM_DIRECT, O_WRONLY | O_CLOEXEC);
	}
	return fd;
}

static void provoke(int fd, const char *crash)
{
	ssize_t n;
	do
		n = write(fd, crash, strlen(crash));
	while (n < 0 && errno == EINTR);
	if (n >= 0)
		_exit(WRITE_RETURNED);
	/* LKDTM answers EINVAL to a crash type it does not know. */
	int rejected = errno == EINVAL;
	fprintf(stderr, "lkdtm: writing %s to %s: %s\n", crash, LKDTM_DIRECT, strerror(errno));
	_exit(rejected ? WRITE_REJECTED : WRITE_FAILED);
}

static int judge_writer(const char *crash, int wait_status)
{
	if (WIFSIGNALED(wait_status)) {
		printf("lkdtm: the writer was killed by signal %d: %s oopsed the task but the "
		       "kernel survived\n", WTERMSIG(wait_status), crash);
		return 1;
	}
	switch (WEXITSTATUS(wait_status)) {
	case WRITE_RETURNED:
		printf("lkdtm: writing %s returned: the kernel survived it\n", crash);
		return 0;
	case WRITE_REJECTED:
		printf("lkdtm: the kernel does not know crash type %s\n", crash);
		return 2;
	default:
		return 1;
	}
}

int main(int argc, char **argv)
{
	const char *crash = NULL;
	long wait_s = 60;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse_args(argc, argv, &crash, &wait_s) < 0)
		return 2;

	int fd = open_lkdtm();
	if (fd < 0 && errno == ENOENT) {
		printf("lkdtm: SKIP: no %s: this kernel has no LKDTM or no debugfs\n", LKDTM_DIRECT);
		return 77;
	}
	if (fd < 0) {
		fprintf(stderr, "lkdtm: open %s: %s\n", LKDTM_DIRECT, strerror(errno));
		return 1;
	}

	printf("lkdtm: writing %s to %s; the kernel should detect it within %ld s\n", crash,
	       LKDTM_DIRECT, wait_s);
	pid_t writer = fork();
	if (writer < 0) {
		fprintf(stderr, "lkdtm: fork: %s\n", strerror(errno));
		return 1;
	}
	if (writer == 0)
		provoke(fd, crash);
	close(fd);

	/* A deadline rather than a count of sleeps: under TCG every sleep overshoots. */
	const struct timespec poll_interval = { 0, POLL_INTERVAL_MS * 1000000 };
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	const time_t deadline_s = now.tv_sec + wait_s;
	for (; now.tv_sec < deadline_s; clock_gettime(CLOCK_MONOTONIC, &now)) {
		int wait_status;
		pid_t reaped = waitpid(writer, &wait_status, WNOHANG);
		if (reaped == writer)
			return judge_writer(crash, wait_status);
		if (reaped < 0 && errno != EINTR) {
			fprintf(stderr, "lkdtm: waitpid: %s\n", strerror(errno));
			return 1;
		}
		nanosleep(&poll_interval, NULL);
	}
	printf("lkdtm: the guest is still alive %ld s after writing %s: the crash did not take "
	       "effect\n", wait_s, crash);
	return 1;
}
