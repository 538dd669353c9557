/*
 * mmcid-churn: a thread pool that keeps growing past the CPU count and shrinking back to one
 * thread, so the process's mm_cid ownership flips between per-task and per-CPU mode over and over:
 * on thread creation (sched_mm_cid_fork and its fixup walk over all threads) and on thread exit
 * (sched_mm_cid_exit). Meanwhile the workers block, yield and move themselves between CPUs, so
 * tasks schedule in, out and across CPUs while the fixups run: the conditions of the BPF CI live
 * lock.
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

/* A window on a CPU picked at random, then back to every allowed CPU: a migration each way. */
static void hop_cpus(struct worker *self)
{
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(allowed_cpu_list[next_random(&self->random_state) % allowed_cpu_count], &one);
	if (sched_setaffinity(0, sizeof(one), &one) == 0)
		check_window(self);
	sched_setaffinity(0, sizeof(allowed_cpus), &allowed_cpus);
}

static void *churn_worker(void *arg)
{
	run_worker(arg, hop_cpus);
	return NULL;
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
		if (matched < 0)
			return -1;
		if (!matched) {
			fprintf(stderr, NAME ": unknown argument '%s' (known: " MMCID_USAGE ")\n",
				argv[i]);
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
	if (status)
		return status;

	/* Thread counts include the main thread, as the kernel's user count does. */
	int max_workers = options.max_threads - 1, min_workers = options.min_threads - 1;
	slots_in_use = max_workers;
	printf(NAME ": %ld s, %d allowed CPUs, %u possible, %ld..%ld threads, period %ld us, "
	       "sleep %ld us\n", options.seconds, allowed_cpu_count, possible_cpus,
	       options.min_threads, options.max_threads, options.period_us, options.sleep_us);

	int live[MAX_THREADS], live_count = 0, free_list[MAX_THREADS], free_count = 0;
	for (int i = max_workers - 1; i >= 0; i--)
		free_list[free_count++] = i;
	struct mode_model model = { 0 };
	uint32_t random_state = 0x2545f491;
	unsigned long rounds = 0;
	long reported_s = 0;
	int failed = 0;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	model_users(&model, 1);

	while (!failed && elapsed_seconds(&start) < options.seconds) {
		while (live_count < max_workers) {
			int index = free_list[--free_count];
			uint32_t seed = next_random(&random_state) | 1;
			if (!spawn_worker(index, seed, &worker_counters[index], churn_worker)) {
				free_count++;
				failed = 1;
				break;
			}
			live[live_count++] = index;
			model_users(&model, live_count + 1);
			wake_all();
		}
		pause_us(options.period_us / 2);

		/* Exits one by one take the exit path once per thread; together, concurrently. */
		bool together = next_random(&random_state) & 1;
		int keep = failed ? 0 : min_workers;
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
			pthread_join(worker->thread, NULL);
			free_list[free_count++] = worker->index;
			model_users(&model, live_count + 1);
		}
		if (together) {
			wake_all();
			for (int i = 0; i < stopping_count; i++) {
				pthread_join(workers[stopping[i]].thread, NULL);
				free_list[free_count++] = stopping[i];
				model_users(&model, live_count + stopping_count - i);
			}
		}
		pause_us(options.period_us / 2);
		rounds++;

		long now_s = (long)elapsed_seconds(&start);
		if (now_s > reported_s) {
			struct totals totals = sum_counters();
			reported_s = now_s;
			printf("LAB-PROGRESS workload=" NAME " elapsed_s=%ld rounds=%lu threads=%d "
			       "to_percpu=%lu to_pertask=%lu windows=%lu aborted=%lu overlaps=%lu "
			       "violations=%lu\n", now_s, rounds, live_count + 1, model.to_per_cpu,
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
