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
#include <sched.h>
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
#define PINNED_ENV "LAB_LKDTM_PINNED"

/* Child exit codes, so the parent can tell the workload's own outcome from the write's. */
#define WRITE_RETURNED 0
#define WRITE_FAILED 1
#define WRITE_REJECTED 2

static long long monotonic_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec * 1000LL + now.tv_nsec / 1000000;
}

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
			if (errno || end == value || *end != '\0' || *wait_s < 1 || *wait_s > 86400) {
				fprintf(stderr, "lkdtm: bad value in '%s' (want 1..86400)\n", argv[i]);
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

static void pin_to_cpu(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0)
		fprintf(stderr, "lkdtm: pinning to CPU %d: %s\n", cpu, strerror(errno));
}

/*
 * Lock up the last CPU and watch from the first: device interrupts, the console among them, mostly
 * land on CPU 0, and the watcher's sleep timer must not be queued on the CPU that stops taking
 * interrupts. Returns 0 if there are not two CPUs to split between them.
 */
static int choose_cpus(int *watcher_cpu, int *writer_cpu)
{
	cpu_set_t allowed;

	*watcher_cpu = *writer_cpu = -1;
	if (sched_getaffinity(0, sizeof(allowed), &allowed) < 0)
		return 0;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &allowed))
			continue;
		if (*watcher_cpu < 0)
			*watcher_cpu = cpu;
		*writer_cpu = cpu;
	}
	return *watcher_cpu != *writer_cpu;
}

static void provoke(int fd, const char *crash, int cpu)
{
	if (cpu >= 0)
		pin_to_cpu(cpu);
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

	/* After the re-exec below the affinity mask holds only the watcher: the choice rides along. */
	int watcher_cpu, writer_cpu;
	const char *pinned = getenv(PINNED_ENV);
	int split = pinned ? sscanf(pinned, "%d %d", &watcher_cpu, &writer_cpu) == 2
			   : choose_cpus(&watcher_cpu, &writer_cpu);
	if (split) {
		pin_to_cpu(watcher_cpu);
		/*
		 * Start over in a fresh address space that has only ever run on the watcher CPU: on
		 * some architectures (powerpc's lazy-TLB shootdown) tearing down an mm that once ran on
		 * the stuck CPU waits for it forever, and then our exit never reaches init.
		 */
		if (!pinned) {
			char cpus[32];
			snprintf(cpus, sizeof(cpus), "%d %d", watcher_cpu, writer_cpu);
			setenv(PINNED_ENV, cpus, 1);
			execv("/proc/self/exe", argv);
			fprintf(stderr, "lkdtm: re-exec on CPU %d: %s\n", watcher_cpu, strerror(errno));
		}
		printf("lkdtm: writer on CPU %d, watcher on CPU %d\n", writer_cpu, watcher_cpu);
	} else {
		printf("lkdtm: only one CPU: nothing may be left to report a lockup of it\n");
	}

	printf("lkdtm: writing %s to %s; the kernel should detect it within %ld s\n", crash,
	       LKDTM_DIRECT, wait_s);
	pid_t writer = fork();
	if (writer < 0) {
		fprintf(stderr, "lkdtm: fork: %s\n", strerror(errno));
		return 1;
	}
	if (writer == 0)
		provoke(fd, crash, split ? writer_cpu : -1);
	close(fd);

	/* A deadline rather than a count of sleeps: under TCG every sleep overshoots. */
	const struct timespec poll_interval = { 0, POLL_INTERVAL_MS * 1000000 };
	const long long deadline_ms = monotonic_ms() + wait_s * 1000;
	while (monotonic_ms() < deadline_ms) {
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
