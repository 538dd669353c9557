/*
 * mmcid-churn: a thread pool that keeps growing past the CPU count and shrinking back to one
 * thread, so the process's mm_cid ownership flips between per-task and per-CPU mode over and over:
 * on thread creation (sched_mm_cid_fork and its fixup walk over all threads) and on thread exit
 * (sched_mm_cid_exit). Meanwhile the workers block, yield and move themselves between CPUs, so
 * tasks schedule in, out and across CPUs while the fixups run: the conditions of the BPF CI live
 * lock.
 *
 * With --survivors=pinned the threads that outlive every swing (the main thread among them) stay on
 * the first allowed CPU, yielding to each other, and the others never run there: the exit that
 * switches back to per-task mode then happens on another CPU while tasks keep scheduling in on the
 * CPU that mm_cid_fixup_cpus_to_tasks() visits first, the conditions of the seed's POWER report.
 *
 * It also checks what user space may rely on, reading the mm_cid the kernel stores in each thread's
 * rseq area: (a) it is below the number of possible CPUs; (b) no two threads of the process hold
 * the same one while both are running. See run_window() in mmcid_check.h
 * for how (b) avoids false alarms.
 */
#define _GNU_SOURCE
#define NAME "mmcid-churn"
#include "workload.h"
#include "mmcid_check.h"

static struct mmcid_counters worker_counters[MAX_THREADS];

/* Where the threads that outlive every swing run: anywhere, or all on the first allowed CPU. */
enum survivors { SURVIVORS_ROAM, SURVIVORS_PINNED };
static const char *const survivors_names[] = { "roam", "pinned" };
static int survivors = SURVIVORS_ROAM;

/* The CPUs the swinging workers run on: all allowed ones, or all but the survivors' one. */
static cpu_set_t roam_cpus;
static int roam_cpu_list[CPU_SETSIZE];
static int roam_cpu_count;
static cpu_set_t survivor_cpu;

/* A window on a CPU picked at random, then back to every roaming CPU: a migration each way. */
static void hop_cpus(struct worker *self)
{
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(roam_cpu_list[next_random(&self->random_state) % roam_cpu_count], &one);
	if (sched_setaffinity(0, sizeof(one), &one) == 0)
		check_window(self);
	sched_setaffinity(0, sizeof(roam_cpus), &roam_cpus);
}

static void *churn_worker(void *arg)
{
	sched_setaffinity(0, sizeof(roam_cpus), &roam_cpus);
	run_worker(arg, hop_cpus);
	return NULL;
}

/*
 * A pinned survivor: windows and a yield, over and over, so that a task schedules in on the
 * survivors' CPU every few microseconds, the one the CPU-to-task fixup walk visits first.
 */
static void *survivor_worker(void *arg)
{
	struct worker *self = arg;
	sched_setaffinity(0, sizeof(survivor_cpu), &survivor_cpu);
	setpriority(PRIO_PROCESS, 0, WORKER_NICE);
	while (!atomic_load_explicit(&self->stop, memory_order_relaxed)) {
		resolve_pending(self);
		check_window(self);
		sched_yield();
	}
	return NULL;
}

/*
 * The main thread's waits. A pinned survivor must keep scheduling in while the others exit, so
 * it yields instead of sleeping or blocking in pthread_join().
 */
static void wait_us(long microseconds)
{
	if (survivors == SURVIVORS_ROAM) {
		pause_us(microseconds);
		return;
	}
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (elapsed_seconds(&start) * 1e6 < microseconds)
		sched_yield();
}

static void join_worker(struct worker *worker)
{
	if (survivors == SURVIVORS_ROAM) {
		pthread_join(worker->thread, NULL);
		return;
	}
	while (pthread_tryjoin_np(worker->thread, NULL) == EBUSY)
		sched_yield();
}

/* Splits the allowed CPUs between the survivors and the swinging workers. 0, or the exit code. */
static int place_threads(void)
{
	roam_cpus = allowed_cpus;
	CPU_ZERO(&survivor_cpu);
	CPU_SET(allowed_cpu_list[0], &survivor_cpu);
	if (survivors == SURVIVORS_PINNED) {
		if (allowed_cpu_count < 2) {
			fprintf(stderr, NAME ": --survivors=pinned needs 2 or more allowed CPUs, "
					"has %d\n", allowed_cpu_count);
			return 2;
		}
		CPU_CLR(allowed_cpu_list[0], &roam_cpus);
		if (sched_setaffinity(0, sizeof(survivor_cpu), &survivor_cpu) < 0) {
			fprintf(stderr, NAME ": sched_setaffinity(CPU %d): %s\n", allowed_cpu_list[0],
				strerror(errno));
			return 1;
		}
	}
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &roam_cpus))
			roam_cpu_list[roam_cpu_count++] = cpu;
	return 0;
}

/*
 * What the kernel's mode switch rules (kernel/sched/core.c, mm_update_max_cids) predict for a
 * given user count, so the progress lines can say how many switches the swings asked for.
 */
struct mode_model {
	bool per_cpu;
	unsigned threshold;
	unsigned long to_per_cpu, to_per_task;
};

static void model_users(struct mode_model *model, unsigned users)
{
	unsigned optimal = users < (unsigned)allowed_cpu_count ? users : (unsigned)allowed_cpu_count;
	unsigned max_cids = optimal + optimal / 4;
	if (max_cids > possible_cpus)
		max_cids = possible_cpus;

	if (!model->per_cpu && users > max_cids) {
		unsigned threshold = optimal - optimal / 4;
		if (threshold > possible_cpus / 2)
			threshold = possible_cpus / 2;
		model->threshold = threshold ? threshold : 1;
		model->per_cpu = true;
		model->to_per_cpu++;
	} else if (model->per_cpu && users < model->threshold) {
		model->per_cpu = false;
		model->to_per_task++;
	}
}

static int parse_args(int argc, char **argv, struct mmcid_options *options)
{
	for (int i = 1; i < argc; i++) {
		int matched = parse_mmcid_option(argv[i], options);
		matched = matched ?: parse_choice(argv[i], "--survivors", survivors_names, 2,
						  &survivors);
		if (matched < 0)
			return -1;
		if (!matched) {
			fprintf(stderr, NAME ": unknown argument '%s' (known: " MMCID_USAGE
					" --survivors=roam|pinned)\n", argv[i]);
			return -1;
		}
	}
	return 0;
}

struct totals {
	unsigned long windows, aborted, overlaps, violations;
};

static struct totals sum_counters(void)
{
	struct totals totals = { 0 };
	for (int i = 0; i < slots_in_use; i++) {
		const struct mmcid_counters *counters = &worker_counters[i];
		totals.windows += atomic_load_explicit(&counters->windows, memory_order_relaxed);
		totals.aborted += atomic_load_explicit(&counters->aborted, memory_order_relaxed);
		totals.overlaps += atomic_load_explicit(&counters->overlaps, memory_order_relaxed);
		totals.violations += atomic_load_explicit(&counters->violations, memory_order_relaxed);
	}
	return totals;
}

int main(int argc, char **argv)
{
	struct mmcid_options options = MMCID_DEFAULTS;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse_args(argc, argv, &options) < 0)
		return 2;
	int status = prepare_mmcid(&options, "the swing", "the top of the swing");
	status = status ?: place_threads();
	if (status)
		return status;

	/* Thread counts include the main thread, as the kernel's user count does. */
	int max_workers = options.max_threads - 1, min_workers = options.min_threads - 1;
	slots_in_use = max_workers;
	/* Pinned survivors hold the first slots for the whole run; the swing uses the others. */
	int pinned = survivors == SURVIVORS_PINNED ? min_workers : 0;
	printf(NAME ": %ld s, %d allowed CPUs, %u possible, %ld..%ld threads, period %ld us, "
	       "sleep %ld us, survivors %s\n", options.seconds, allowed_cpu_count, possible_cpus,
	       options.min_threads, options.max_threads, options.period_us, options.sleep_us,
	       survivors_names[survivors]);

	int live[MAX_THREADS], live_count = 0, free_list[MAX_THREADS], free_count = 0;
	for (int i = max_workers - 1; i >= pinned; i--)
		free_list[free_count++] = i;
	struct mode_model model = { 0 };
	uint32_t random_state = 0x2545f491;
	unsigned long rounds = 0;
	long reported_s = 0;
	int failed = 0;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	int spawned = 0;
	for (; spawned < pinned; spawned++)
		if (!spawn_worker(spawned, next_random(&random_state) | 1, &worker_counters[spawned],
				  survivor_worker)) {
			failed = 1;
			break;
		}
	model_users(&model, 1 + spawned);

	while (!failed && elapsed_seconds(&start) < options.seconds) {
		while (live_count < max_workers - pinned) {
			int index = free_list[--free_count];
			uint32_t seed = next_random(&random_state) | 1;
			if (!spawn_worker(index, seed, &worker_counters[index], churn_worker)) {
				free_count++;
				failed = 1;
				break;
			}
			live[live_count++] = index;
			model_users(&model, pinned + live_count + 1);
			wake_all();
		}
		wait_us(options.period_us / 2);

		/* Exits one by one take the exit path once per thread; together, concurrently. */
		bool together = next_random(&random_state) & 1;
		int keep = failed || pinned ? 0 : min_workers;
		int stopping[MAX_THREADS], stopping_count = 0;
		while (live_count > keep) {
			int pick = next_random(&random_state) % live_count;
			struct worker *worker = &workers[live[pick]];
			live[pick] = live[--live_count];
			atomic_store(&worker->stop, true);
			stopping[stopping_count++] = worker->index;
			if (together)
				continue;
			wake_all();
			join_worker(worker);
			free_list[free_count++] = worker->index;
			model_users(&model, pinned + live_count + 1);
		}
		if (together) {
			wake_all();
			for (int i = 0; i < stopping_count; i++) {
				join_worker(&workers[stopping[i]]);
				free_list[free_count++] = stopping[i];
				model_users(&model, pinned + live_count + stopping_count - i);
			}
		}
		wait_us(options.period_us / 2);
		rounds++;

		long now_s = (long)elapsed_seconds(&start);
		if (now_s > reported_s) {
			struct totals totals = sum_counters();
			reported_s = now_s;
			printf("LAB-PROGRESS workload=" NAME " elapsed_s=%ld rounds=%lu threads=%d "
			       "to_percpu=%lu to_pertask=%lu windows=%lu aborted=%lu overlaps=%lu "
			       "violations=%lu\n", now_s, rounds, pinned + live_count + 1, model.to_per_cpu,
			       model.to_per_task, totals.windows, totals.aborted, totals.overlaps,
			       totals.violations);
		}
	}

	double elapsed = elapsed_seconds(&start);
	struct totals totals = sum_counters();
	failed |= totals.violations > 0;
	printf(NAME ": %s after %.1f s: rounds=%lu (%.1f/s) to_percpu=%lu to_pertask=%lu "
	       "windows=%lu aborted=%lu overlaps=%lu violations=%lu\n", failed ? "FAILED" : "done",
	       elapsed, rounds, rounds / elapsed, model.to_per_cpu, model.to_per_task,
	       totals.windows, totals.aborted, totals.overlaps, totals.violations);
	return failed;
}
