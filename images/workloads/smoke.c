/*
 * smoke: churns threads for a while so the scheduler sees tasks appear, run, yield and exit on
 * every CPU. Each round starts between 1 and 2x the online CPUs threads and joins them all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NAME "smoke"
#include "workload.h"

#define WORK_ITERATIONS 20000
#define ITERATIONS_PER_YIELD 2000

struct worker {
	pthread_t thread;
	uint32_t seed;
	uint32_t result;
};

static void *spin_and_yield(void *arg)
{
	struct worker *worker = arg;
	uint32_t state = worker->seed;

	for (int i = 1; i <= WORK_ITERATIONS; i++) {
		next_random(&state);
		if (i % ITERATIONS_PER_YIELD == 0)
			sched_yield();
	}
	worker->result = state;
	return NULL;
}

static int parse_args(int argc, char **argv, long *seconds)
{
	for (int i = 1; i < argc; i++) {
		const char *value;
		char *end;

		if (strncmp(argv[i], "--seconds=", strlen("--seconds=")) != 0) {
			fprintf(stderr, "smoke: unknown argument '%s' (known: --seconds=N)\n", argv[i]);
			return -1;
		}
		value = argv[i] + strlen("--seconds=");
		errno = 0;
		*seconds = strtol(value, &end, 10);
		if (errno || end == value || *end != '\0' || *seconds < 1 || *seconds > 86400) {
			fprintf(stderr, "smoke: bad value in '%s' (want 1..86400)\n", argv[i]);
			return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	long seconds = 5;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse_args(argc, argv, &seconds) < 0)
		return 2;

	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1)
		cpus = 1;
	int max_threads = 2 * cpus;
	struct worker *workers = calloc(max_threads, sizeof(*workers));
	if (!workers) {
		fprintf(stderr, "smoke: out of memory for %d workers\n", max_threads);
		return 1;
	}
	printf("smoke: %ld s, %ld CPUs, 1..%d threads per round\n", seconds, cpus, max_threads);

	uint32_t random_state = 0x2545f491;
	unsigned long rounds = 0, threads_started = 0;
	uint32_t checksum = 0;
	long reported_s = 0;
	int failed = 0;
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);

	while (!failed && elapsed_seconds(&start) < seconds) {
		int wanted = 1 + next_random(&random_state) % max_threads;
		int started = 0;

		for (; started < wanted; started++) {
			workers[started].seed = next_random(&random_state) | 1;
			int err = pthread_create(&workers[started].thread, NULL, spin_and_yield,
						 &workers[started]);
			if (err) {
				fprintf(stderr, "smoke: pthread_create (thread %d of %d): %s\n",
					started + 1, wanted, strerror(err));
				failed = 1;
				break;
			}
		}
		for (int i = 0; i < started; i++) {
			int err = pthread_join(workers[i].thread, NULL);
			if (err) {
				fprintf(stderr, "smoke: pthread_join: %s\n", strerror(err));
				failed = 1;
			}
			checksum ^= workers[i].result;
		}
		threads_started += started;
		rounds++;

		long now_s = (long)elapsed_seconds(&start);
		if (now_s > reported_s) {
			reported_s = now_s;
			printf("LAB-PROGRESS workload=smoke elapsed_s=%ld rounds=%lu\n", now_s, rounds);
		}
	}

	printf("smoke: %s after %.1f s: rounds=%lu threads=%lu checksum=%08x\n",
	       failed ? "FAILED" : "done", elapsed_seconds(&start), rounds, threads_started,
	       (unsigned)checksum);
	free(workers);
	return failed ? 1 : 0;
}
