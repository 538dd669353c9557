/*
 * rseq-selftests: runs the kernel's own rseq selftests (tools/testing/selftests/rseq), which the
 * lab builds static from the source tree of the kernel under test and installs in
 * /lab/selftests/rseq (lab/src/kernel/selftests.rs). It runs them as the tree's run_param_test.sh
 * and run_*.sh do, with the default parameters only and fewer repetitions, to fit a TCG guest.
 *
 * Each run is one program: exit 0 passes, exit 4 (KSFT_SKIP) skips, anything else fails; its
 * output is kept and shown only when it did not pass. A program the tree does not build (an older
 * kernel) skips.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "rseq-selftests"
#include "workload.h"

#define SELFTESTS_DIR "/lab/selftests/rseq"
#define OUTPUT_FILE "/tmp/rseq-selftest.out"
#define USAGE "--tests=NAME,... --reps=N --threads=N --timeout=SECONDS"
#define KSFT_SKIP 4
#define OUTPUT_TAIL_LINES 20
/* Per test: a broken kernel fails every run, the first few explain, the counts tell the rest. */
#define MAX_PROBLEM_LINES 4
#define MAX_OUTPUT_TAILS 2
#define POLL_US 100000
#define MAX_ARGS 16

struct test {
	const char *name;
	/* Each run once, or once per param_test case. */
	const char *programs[2];
	bool param_cases;
	/* Run first; if it fails the kernel lacks the feature and the test skips. */
	const char *guard;
};

/* As the tree's scripts group them. */
static const struct test tests[] = {
	{ "basic", { "basic_test" }, false, NULL },
	{ "percpu", { "basic_percpu_ops_test" }, false, NULL },
	{ "percpu-mm-cid", { "basic_percpu_ops_mm_cid_test" }, false, NULL },
	{ "param", { "param_test", "param_test_compare_twice" }, true, NULL },
	{ "param-mm-cid", { "param_test_mm_cid", "param_test_mm_cid_compare_twice" }, true, NULL },
	{ "syscall-errors", { "syscall_errors_test" }, false, NULL },
	{ "legacy", { "legacy_check" }, false, NULL },
	{ "slice", { "slice_test" }, false, "check_optimized" },
};
#define TEST_COUNT (int)(sizeof(tests) / sizeof(tests[0]))

/* run_param_test.sh's TEST_LIST: spinlock, list, buffer, with barrier, memcpy, with barrier,
 * increment, membarrier. */
static const char *const param_cases[][2] = {
	{ "s", NULL }, { "l", NULL }, { "b", NULL }, { "b", "-M" },
	{ "m", NULL }, { "m", "-M" }, { "i", NULL }, { "r", NULL },
};
#define PARAM_CASE_COUNT (int)(sizeof(param_cases) / sizeof(param_cases[0]))

struct options {
	bool selected[TEST_COUNT];
	long reps, threads, timeout_s;
};

struct tally {
	unsigned long runs, passed, failed, skipped;
};

static struct timespec start;
static long reported_s;
static _Atomic unsigned long problem_lines;
static struct tally tally;
static const char *current_test = "none";

static int parse_tests(const char *arg, struct options *options)
{
	const char *key = "--tests=";
	if (strncmp(arg, key, strlen(key)) != 0)
		return 0;
	memset(options->selected, 0, sizeof(options->selected));
	for (const char *word = arg + strlen(key); *word;) {
		size_t length = strcspn(word, ",");
		int i = 0;
		while (i < TEST_COUNT && (strlen(tests[i].name) != length ||
					  strncmp(tests[i].name, word, length) != 0))
			i++;
		if (i == TEST_COUNT) {
			fprintf(stderr, NAME ": unknown test '%.*s' in '%s' (known:", (int)length, word,
				arg);
			for (i = 0; i < TEST_COUNT; i++)
				fprintf(stderr, " %s", tests[i].name);
			fprintf(stderr, ")\n");
			return -1;
		}
		options->selected[i] = true;
		word += length + (word[length] == ',');
	}
	return 1;
}

static int parse_args(int argc, char **argv, struct options *options)
{
	for (int i = 1; i < argc; i++) {
		int matched = parse_tests(argv[i], options);
		if (!matched)
			matched = parse_number(argv[i], "--reps", 1, 1000000, &options->reps);
		if (!matched)
			matched = parse_number(argv[i], "--threads", 1, 1024, &options->threads);
		if (!matched)
			matched = parse_number(argv[i], "--timeout", 1, 86400, &options->timeout_s);
		if (matched < 0)
			return -1;
		if (!matched) {
			fprintf(stderr, NAME ": unknown argument '%s' (known: " USAGE ")\n", argv[i]);
			return -1;
		}
	}
	return 0;
}

static void print_progress(void)
{
	printf("LAB-PROGRESS workload=" NAME " elapsed_s=%.0f test=%s runs=%lu passed=%lu failed=%lu "
	       "skipped=%lu\n", elapsed_seconds(&start), current_test, tally.runs, tally.passed,
	       tally.failed, tally.skipped);
}

/* The last lines of what the run printed, so a failure explains itself on the console. */
static void show_output_tail(void)
{
	FILE *file = fopen(OUTPUT_FILE, "r");
	if (!file)
		return;
	char lines[OUTPUT_TAIL_LINES][256];
	unsigned long count = 0;
	while (fgets(lines[count % OUTPUT_TAIL_LINES], sizeof(lines[0]), file))
		count++;
	fclose(file);
	unsigned long first = count > OUTPUT_TAIL_LINES ? count - OUTPUT_TAIL_LINES : 0;
	for (unsigned long i = first; i < count; i++) {
		char *line = lines[i % OUTPUT_TAIL_LINES];
		line[strcspn(line, "\n")] = '\0';
		printf(NAME ": | %s\n", line);
	}
}

/* A FAIL or SKIP line, with the tail of the run's output when @output says it has one. */
static void problem(bool output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(bool output, const char *fmt, ...)
{
	bool with_tail = output && atomic_load(&problem_lines) < MAX_OUTPUT_TAILS;
	va_list args;
	va_start(args, fmt);
	vprint_limited(&problem_lines, MAX_PROBLEM_LINES, fmt, args);
	va_end(args);
	if (with_tail)
		show_output_tail();
}

enum outcome { PASSED, FAILED, SKIPPED };

/*
 * Runs argv (argv[0] a program name in SELFTESTS_DIR) to its end or the timeout, and says why if it
 * did not pass, unless @quiet.
 */
static enum outcome run(char *const argv[], long timeout_s, bool quiet)
{
	char path[256], command[512] = "";
	snprintf(path, sizeof(path), SELFTESTS_DIR "/%s", argv[0]);
	for (int i = 0; argv[i]; i++)
		snprintf(command + strlen(command), sizeof(command) - strlen(command), "%s%s",
			 i ? " " : "", argv[i]);
	if (access(path, X_OK) != 0) {
		problem(false, "SKIP %s: not built from this kernel's tree", command);
		return SKIPPED;
	}

	struct timespec run_start;
	clock_gettime(CLOCK_MONOTONIC, &run_start);
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		problem(false, "FAIL %s: fork: %s", command, strerror(errno));
		return FAILED;
	}
	if (pid == 0) {
		int fd = open(OUTPUT_FILE, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		execv(path, argv);
		fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}

	int status;
	for (;;) {
		pid_t done = waitpid(pid, &status, WNOHANG);
		if (done == pid)
			break;
		if (done < 0 && errno != EINTR) {
			problem(false, "FAIL %s: waitpid: %s", command, strerror(errno));
			return FAILED;
		}
		double took_s = elapsed_seconds(&run_start);
		if (took_s >= timeout_s) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			problem(true, "FAIL %s: still running after %ld s (--timeout), killed", command,
				timeout_s);
			return FAILED;
		}
		if ((long)elapsed_seconds(&start) > reported_s) {
			reported_s = (long)elapsed_seconds(&start);
			print_progress();
		}
		pause_us(POLL_US);
	}
	double took_s = elapsed_seconds(&run_start);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return PASSED;
	if (quiet)
		return FAILED;
	if (WIFEXITED(status) && WEXITSTATUS(status) == KSFT_SKIP) {
		problem(true, "SKIP %s (%.1f s)", command, took_s);
		return SKIPPED;
	}
	if (WIFSIGNALED(status))
		problem(true, "FAIL %s: killed by signal %d (%.1f s)", command, WTERMSIG(status),
			took_s);
	else
		problem(true, "FAIL %s: exit %d (%.1f s)", command, WEXITSTATUS(status), took_s);
	return FAILED;
}

static void count(enum outcome outcome)
{
	tally.runs++;
	if (outcome == PASSED)
		tally.passed++;
	else if (outcome == FAILED)
		tally.failed++;
	else
		tally.skipped++;
}

static void run_test(const struct test *test, const struct options *options)
{
	char reps[32], threads[32];
	snprintf(reps, sizeof(reps), "%ld", options->reps);
	snprintf(threads, sizeof(threads), "%ld", options->threads);
	current_test = test->name;
	atomic_store(&problem_lines, 0);

	if (test->guard) {
		char *argv[] = { (char *)test->guard, NULL };
		if (run(argv, options->timeout_s, true) != PASSED) {
			printf(NAME ": SKIP %s: %s failed: the kernel lacks what it tests\n", test->name,
			       test->guard);
			count(SKIPPED);
			return;
		}
	}
	for (int p = 0; p < 2 && test->programs[p]; p++) {
		for (int c = 0; c < (test->param_cases ? PARAM_CASE_COUNT : 1); c++) {
			char *argv[MAX_ARGS];
			int n = 0;
			argv[n++] = (char *)test->programs[p];
			if (test->param_cases) {
				argv[n++] = "-T";
				argv[n++] = (char *)param_cases[c][0];
				if (param_cases[c][1])
					argv[n++] = (char *)param_cases[c][1];
				argv[n++] = "-r";
				argv[n++] = reps;
				argv[n++] = "-t";
				argv[n++] = threads;
			}
			argv[n] = NULL;
			count(run(argv, options->timeout_s, false));
		}
	}
}

int main(int argc, char **argv)
{
	const char *cpus = getenv("LAB_CPUS");
	long cpu_count = cpus ? atol(cpus) : sysconf(_SC_NPROCESSORS_ONLN);
	/* run_param_test.sh's thread count; its 1000 repetitions are too many for TCG. */
	struct options options = { .reps = 100, .threads = 6 * (cpu_count > 0 ? cpu_count : 1),
				   .timeout_s = 120 };
	for (int i = 0; i < TEST_COUNT; i++)
		options.selected[i] = true;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse_args(argc, argv, &options) < 0)
		return 2;
	struct stat dir;
	if (stat(SELFTESTS_DIR, &dir) != 0) {
		printf(NAME ": skipped: no %s: this kernel's tree has no rseq selftests\n",
		       SELFTESTS_DIR);
		return 77;
	}
	/* As the tree's scripts do: librseq registers rseq itself, not glibc. */
	setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0", 1);

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int i = 0; i < TEST_COUNT; i++) {
		if (!options.selected[i])
			continue;
		struct tally before = tally;
		run_test(&tests[i], &options);
		printf(NAME ": %s: %lu runs, %lu passed, %lu failed, %lu skipped\n", tests[i].name,
		       tally.runs - before.runs, tally.passed - before.passed,
		       tally.failed - before.failed, tally.skipped - before.skipped);
	}
	printf(NAME ": %s after %.1f s: runs=%lu passed=%lu failed=%lu skipped=%lu\n",
	       tally.failed ? "FAILED" : "done", elapsed_seconds(&start), tally.runs, tally.passed,
	       tally.failed, tally.skipped);
	if (tally.failed)
		return 1;
	return tally.passed ? 0 : 77;
}
