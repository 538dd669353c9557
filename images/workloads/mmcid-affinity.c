/*
 * mmcid-affinity: narrows and widens the allowed CPUs of every thread of a process while its
 * threads come and go, so mm_update_cpus_allowed() keeps recomputing the mm_cid limits (max_cids,
 * the per-CPU mode threshold) and may queue its deferred switch back to per-task mode, in the
 * middle of fork and exit mode switches. The union of allowed CPUs an mm remembers only grows, so
 * each cycle is a fresh process born on a few CPUs and widened step by step.
 *
 * The affinity changes go through sched_setaffinity on every thread and, where /sys/fs/cgroup is
 * a cgroup2 mount offering cpuset, also through a cpuset cgroup's cpuset.cpus.
 *
 * It checks the same as mmcid-churn, from each thread's rseq area: (a) mm_cid is below the number
 * of possible CPUs; (b) no two threads hold the same one while both are running (mmcid_check.h).
 */
#define _GNU_SOURCE
#define NAME "mmcid-affinity"
#include "workload.h"
#include "mmcid_check.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>

/* Shared between the supervisor and the cycle processes it forks, which do the counting. */
struct shared {
	struct mmcid_counters check;
	_Atomic unsigned long violations_printed;
	_Atomic unsigned long affinity_steps, widenings, cpuset_writes, threads;
};

static struct shared *shared;
/* For apply_affinity(): each worker stores its own thread id, 0 until it has. */
static _Atomic pid_t worker_tids[MAX_THREADS];

static void *affinity_worker(void *arg)
{
	struct worker *self = arg;

	atomic_store(&worker_tids[self->index], gettid());
	run_worker(self, NULL);
	return NULL;
}

static int parse_args(int argc, char **argv, struct mmcid_options *options, long *cycle_ms)
{
	for (int i = 1; i < argc; i++) {
		int matched = parse_mmcid_option(argv[i], options);
		matched = matched ?: parse_number(argv[i], "--cycle-ms", 10, 60000, cycle_ms);
		if (matched < 0)
			return -1;
		if (!matched) {
			fprintf(stderr, NAME ": unknown argument '%s' (known: " MMCID_USAGE
					" --cycle-ms=N)\n", argv[i]);
			return -1;
		}
	}
	return 0;
}

#define CGROUP_ROOT "/sys/fs/cgroup"
#define CGROUP_DIR CGROUP_ROOT "/lab-mmcid-affinity"
#define CGROUP2_SUPER_MAGIC 0x63677270

static bool write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool written = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return written;
}

static bool cpuset_controller_available(void)
{
	struct statfs fs;
	char controllers[256] = "";
	FILE *file;

	if (statfs(CGROUP_ROOT, &fs) < 0 || fs.f_type != CGROUP2_SUPER_MAGIC)
		return false;
	file = fopen(CGROUP_ROOT "/cgroup.controllers", "r");
	if (!file)
		return false;
	bool listed = fgets(controllers, sizeof(controllers), file) && strstr(controllers, "cpuset");
	fclose(file);
	return listed;
}

/* A cpuset cgroup for the cycles, or false: the cgroup path is optional and stays quiet. */
static bool create_cpuset_cgroup(void)
{
	if (!cpuset_controller_available())
		return false;
	write_file(CGROUP_ROOT "/cgroup.subtree_control", "+cpuset");
	if (mkdir(CGROUP_DIR, 0755) < 0 && errno != EEXIST)
		return false;
	return access(CGROUP_DIR "/cpuset.cpus", W_OK) == 0;
}

static void format_cpu_list(const cpu_set_t *set, char *text, size_t size)
{
	size_t used = 0;
	text[0] = '\0';
	for (int cpu = 0; cpu < CPU_SETSIZE && used + 8 < size; cpu++)
		if (CPU_ISSET(cpu, set))
			used += snprintf(text + used, size - used, "%s%d", used ? "," : "", cpu);
}

static void random_subset(uint32_t *random_state, int size, cpu_set_t *set)
{
	CPU_ZERO(set);
	while (CPU_COUNT(set) < size)
		CPU_SET(allowed_cpu_list[next_random(random_state) % allowed_cpu_count], set);
}

struct cycle {
	int live[MAX_THREADS], live_count;
	int free_list[MAX_THREADS], free_count;
	int min_workers, max_workers;
	cpu_set_t current, ever_allowed;
	bool in_cgroup;
	uint32_t random_state;
};

static bool start_worker(struct cycle *cycle)
{
	int index = cycle->free_list[--cycle->free_count];
	uint32_t seed = next_random(&cycle->random_state) | 1;
	atomic_store(&worker_tids[index], 0);
	if (!spawn_worker(index, seed, &shared->check, affinity_worker)) {
		cycle->free_count++;
		return false;
	}
	cycle->live[cycle->live_count++] = index;
	atomic_fetch_add(&shared->threads, 1);
	wake_all();
	return true;
}

static void stop_worker(struct cycle *cycle, int pick)
{
	struct worker *worker = &workers[cycle->live[pick]];
	cycle->live[pick] = cycle->live[--cycle->live_count];
	atomic_store(&worker->stop, true);
	wake_all();
	pthread_join(worker->thread, NULL);
	cycle->free_list[cycle->free_count++] = worker->index;
	atomic_fetch_sub(&shared->threads, 1);
}

/*
 * Gives every thread of the process the same allowed CPUs, one sched_setaffinity (or one cpuset
 * write) at a time: each one that adds a CPU the mm has not seen yet updates its mm_cid limits.
 */
static void apply_affinity(struct cycle *cycle, const cpu_set_t *set)
{
	bool grows = false;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, set) && !CPU_ISSET(cpu, &cycle->ever_allowed))
			grows = true;
	CPU_OR(&cycle->ever_allowed, &cycle->ever_allowed, set);
	cycle->current = *set;
	atomic_fetch_add(&shared->affinity_steps, 1);
	if (grows)
		atomic_fetch_add(&shared->widenings, 1);

	if (cycle->in_cgroup && next_random(&cycle->random_state) & 1) {
		char list[CPU_SETSIZE * 4];
		format_cpu_list(set, list, sizeof(list));
		if (write_file(CGROUP_DIR "/cpuset.cpus", list)) {
			atomic_fetch_add(&shared->cpuset_writes, 1);
			return;
		}
	}
	/* A thread that has just exited answers ESRCH, one outside the cpuset EINVAL: both fine. */
	sched_setaffinity(0, sizeof(*set), set);
	for (int i = 0; i < cycle->live_count; i++) {
		pid_t tid = atomic_load(&worker_tids[cycle->live[i]]);
		if (tid)
			sched_setaffinity(tid, sizeof(*set), set);
	}
}

/* One step of the driver: widen, narrow, add a thread or remove one, at random. */
static bool cycle_step(struct cycle *cycle)
{
	cpu_set_t set;

	switch (next_random(&cycle->random_state) % 4) {
	case 0:
		set = cycle->current;
		CPU_SET(allowed_cpu_list[next_random(&cycle->random_state) % allowed_cpu_count], &set);
		apply_affinity(cycle, &set);
		return true;
	case 1:
		random_subset(&cycle->random_state,
			      1 + next_random(&cycle->random_state) % allowed_cpu_count, &set);
		apply_affinity(cycle, &set);
		return true;
	case 2:
		if (cycle->live_count < cycle->max_workers)
			return start_worker(cycle);
		return true;
	default:
		if (cycle->live_count > cycle->min_workers)
			stop_worker(cycle,
				    next_random(&cycle->random_state) % cycle->live_count);
		return true;
	}
}

/*
 * One cycle, in a fresh process that was forked on @born_on and so starts with an mm whose
 * allowed CPUs are only those: grow past the CPUs, then step at random until @cycle_ms is over.
 */
static int run_cycle(const struct mmcid_options *options, long cycle_ms, const cpu_set_t *born_on,
		     bool use_cgroup, uint32_t seed)
{
	struct cycle cycle = { .random_state = seed | 1, .current = *born_on,
			       .ever_allowed = *born_on };
	int failed = 0;

	cycle.max_workers = options->max_threads - 1;
	cycle.min_workers = options->min_threads - 1;
	for (int i = cycle.max_workers - 1; i >= 0; i--)
		cycle.free_list[cycle.free_count++] = i;
	if (use_cgroup) {
		/* Undo the last cycle's narrowing first, or joining would move us off born_on. */
		char all[CPU_SETSIZE * 4], pid[32];
		format_cpu_list(&allowed_cpus, all, sizeof(all));
		snprintf(pid, sizeof(pid), "%d", getpid());
		cycle.in_cgroup = write_file(CGROUP_DIR "/cpuset.cpus", all) &&
				  write_file(CGROUP_DIR "/cgroup.procs", pid);
	}

	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (!failed && cycle.live_count < cycle.max_workers)
		failed = !start_worker(&cycle);
	while (!failed && elapsed_seconds(&start) * 1000 < cycle_ms) {
		failed = !cycle_step(&cycle);
		pause_us(options->period_us);
	}
	while (cycle.live_count)
		stop_worker(&cycle, cycle.live_count - 1);
	fflush(stdout);
	return failed;
}

int main(int argc, char **argv)
{
	struct mmcid_options options = MMCID_DEFAULTS;
	long cycle_ms = 300;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse_args(argc, argv, &options, &cycle_ms) < 0)
		return 2;
	int status = prepare_mmcid(&options, "the range", "the most threads");
	if (status)
		return status;
	shared = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
		      0);
	if (shared == MAP_FAILED) {
		fprintf(stderr, NAME ": mmap: %s\n", strerror(errno));
		return 1;
	}
	violations_printed = &shared->violations_printed;
	slots_in_use = options.max_threads - 1;
	bool use_cgroup = create_cpuset_cgroup();
	printf(NAME ": %ld s, %d allowed CPUs, %u possible, %ld..%ld threads, cycles of %ld ms, "
	       "steps every %ld us, sleep %ld us, cpuset cgroup %s\n", options.seconds,
	       allowed_cpu_count, possible_cpus, options.min_threads, options.max_threads,
	       cycle_ms, options.period_us, options.sleep_us, use_cgroup ? "yes" : "no");

	uint32_t random_state = 0x2545f491;
	unsigned long cycles = 0;
	long reported_s = 0;
	int failed = 0;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);

	while (!failed && elapsed_seconds(&start) < options.seconds) {
		/* The child's mm takes the forking thread's allowed CPUs as its first set. */
		cpu_set_t born_on;
		random_subset(&random_state, 1 + (next_random(&random_state) % allowed_cpu_count) / 2,
			      &born_on);
		sched_setaffinity(0, sizeof(born_on), &born_on);
		uint32_t seed = next_random(&random_state);
		pid_t child = fork();
		if (child == 0)
			_exit(run_cycle(&options, cycle_ms, &born_on, use_cgroup, seed));
		sched_setaffinity(0, sizeof(allowed_cpus), &allowed_cpus);
		if (child < 0) {
			fprintf(stderr, NAME ": fork: %s\n", strerror(errno));
			failed = 1;
			break;
		}

		int status;
		while (waitpid(child, &status, WNOHANG) == 0) {
			pause_us(50000);
			long now_s = (long)elapsed_seconds(&start);
			if (now_s <= reported_s)
				continue;
			reported_s = now_s;
			printf("LAB-PROGRESS workload=" NAME " elapsed_s=%ld cycles=%lu threads=%lu "
			       "affinity_steps=%lu widenings=%lu cpuset_writes=%lu windows=%lu "
			       "aborted=%lu overlaps=%lu violations=%lu\n", now_s, cycles,
			       atomic_load(&shared->threads) + 1, atomic_load(&shared->affinity_steps),
			       atomic_load(&shared->widenings), atomic_load(&shared->cpuset_writes),
			       atomic_load(&shared->check.windows), atomic_load(&shared->check.aborted),
			       atomic_load(&shared->check.overlaps), atomic_load(&shared->check.violations));
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			printf(NAME ": cycle %lu ended with %s %d\n", cycles,
			       WIFEXITED(status) ? "exit" : "signal",
			       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
			failed = 1;
		}
		cycles++;
	}
	if (use_cgroup)
		rmdir(CGROUP_DIR);

	double elapsed = elapsed_seconds(&start);
	unsigned long violations = atomic_load(&shared->check.violations);
	failed |= violations > 0;
	printf(NAME ": %s after %.1f s: cycles=%lu (%.1f/s) affinity_steps=%lu widenings=%lu "
	       "cpuset_writes=%lu windows=%lu aborted=%lu overlaps=%lu violations=%lu\n",
	       failed ? "FAILED" : "done", elapsed, cycles, cycles / elapsed,
	       atomic_load(&shared->affinity_steps), atomic_load(&shared->widenings),
	       atomic_load(&shared->cpuset_writes), atomic_load(&shared->check.windows),
	       atomic_load(&shared->check.aborted), atomic_load(&shared->check.overlaps), violations);
	return failed;
}
