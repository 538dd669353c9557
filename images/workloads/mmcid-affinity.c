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
 * of possible CPUs; (b) no two threads hold the same one while both are running.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#define NAME "mmcid-affinity"
#define MAX_THREADS 1024
#define MAX_VIOLATION_LINES 10

/* struct rseq offsets (uapi/linux/rseq.h): glibc 2.36's struct rseq stops before mm_cid. */
#define RSEQ_CPU_ID_OFFSET 4
#define RSEQ_CS_OFFSET 8
#define RSEQ_MM_CID_OFFSET 24
#define RSEQ_MM_CID_END 28
#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27
#endif

/* Long enough for other threads to look at an open window, short enough to rarely be preempted. */
#define WINDOW_SPINS 2000
/* Windows run back to back between blocking, yielding or moving: the brief spin. */
#define WINDOWS_PER_BURST 4
/* setpriority(PRIO_PROCESS, 0, ...) applies to the calling thread only on Linux. */
#define WORKER_NICE 5
/* How many loop iterations a worker waits for the outcome of another thread's window. */
#define PENDING_TRIES 64

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/*
 * A window is an rseq critical section: the kernel moves the thread to the abort label if it
 * preempts, migrates or signals it anywhere inside. A committed window therefore ran on one CPU
 * without interruption by the scheduler, and the mm_cid it read at its start was the thread's CID
 * for the whole window (CIDs change only across a context switch).
 */
enum window_state { WINDOW_OPEN = 1, WINDOW_COMMITTED = 2, WINDOW_ABORTED = 3 };

struct slot {
	/* generation << 2 | window_state. Generations never repeat on a slot, even across owners. */
	_Atomic uint64_t window;
	/* generation(32) << 32 | cid(16) << 16 | cpu(16) of the owner's last committed window */
	_Atomic uint64_t sample;
} __attribute__((aligned(128)));

struct pending_observation {
	bool active;
	int slot;
	uint64_t generation;
	uint32_t cid, cpu;
	int tries;
};

/* Shared between the supervisor and the cycle processes it forks, which do the counting. */
struct shared {
	_Atomic unsigned long windows, aborted, overlaps, violations, violations_printed;
	_Atomic unsigned long affinity_steps, widenings, cpuset_writes, threads;
};

struct worker {
	pthread_t thread;
	int index;
	_Atomic bool stop;
	uint32_t random_state;
	struct pending_observation pending;
	_Atomic pid_t tid;
};

static struct slot slots[MAX_THREADS];
static struct worker workers[MAX_THREADS];
static int slots_in_use;
static unsigned possible_cpus;
static cpu_set_t allowed_cpus;
static int allowed_cpu_list[CPU_SETSIZE];
static int allowed_cpu_count;
static long sleep_us = 50;
static _Atomic uint32_t wake_word;
static struct shared *shared;

static uint32_t next_random(uint32_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 17;
	*state ^= *state << 5;
	return *state;
}

static char *rseq_area(void)
{
#if defined(__powerpc64__)
	/* GCC has no __builtin_thread_pointer for powerpc; the ABI keeps it in r13. */
	register char *thread_pointer __asm__("r13");
	__asm__("" : "=r"(thread_pointer));
#else
	char *thread_pointer = __builtin_thread_pointer();
#endif
	return thread_pointer + __rseq_offset;
}

/*
 * Runs one window on the calling thread: reads its mm_cid and cpu_id, marks its slot open,
 * spins, reads another thread's slot and marks its own committed, all inside one rseq critical
 * section. Returns false if the kernel aborted it.
 *
 * Check (b) builds on two committed windows: if this thread saw another's slot open for
 * generation g inside its own committed window, and that window g commits too, then at the moment
 * of the read both threads were on a CPU, each with the CID it read at its window's start. With a
 * correct kernel that is impossible for equal CIDs: one thread's CID only passes to another
 * through a context switch of the first (a full barrier), so the reader would have seen the slot
 * committed, not open. A thread that was preempted keeps a stale mm_cid in its rseq area, but its
 * window aborts and never counts.
 */
static __attribute__((noinline)) bool run_window(struct slot *own, uint64_t generation,
						 const struct slot *other, uint32_t *cid,
						 uint32_t *cpu, uint64_t *other_window)
{
	char *rseq = rseq_area();
	uint64_t open = generation << 2 | WINDOW_OPEN;
	uint64_t committed = generation << 2 | WINDOW_COMMITTED;
	unsigned long spins = WINDOW_SPINS;
	uint32_t ok;

#if defined(__x86_64__)
	__asm__ __volatile__(
		".pushsection __rseq_cs, \"aw\"\n"
		".balign 32\n"
		"3: .long 0, 0\n"
		".quad 1f, 2f - 1f, 4f\n"
		".popsection\n"
		"leaq 3b(%%rip), %%rax\n"
		"movq %%rax, " STRINGIFY(RSEQ_CS_OFFSET) "(%[rseq])\n"
		"1: movl " STRINGIFY(RSEQ_MM_CID_OFFSET) "(%[rseq]), %k[cid]\n"
		"movl " STRINGIFY(RSEQ_CPU_ID_OFFSET) "(%[rseq]), %k[cpu]\n"
		"movq %[open], (%[own])\n"
		"5: decq %[spins]\n"
		"jnz 5b\n"
		"movq (%[other]), %[other_window]\n"
		"movq %[committed], (%[own])\n"
		"2: movl $1, %k[ok]\n"
		"jmp 6f\n"
		".long " STRINGIFY(RSEQ_SIG) "\n"
		"4: movl $0, %k[ok]\n"
		"6:\n"
		: [cid] "=&r"(*cid), [cpu] "=&r"(*cpu), [other_window] "=&r"(*other_window),
		  [ok] "=&r"(ok), [spins] "+r"(spins)
		: [rseq] "r"(rseq), [own] "r"(&own->window), [other] "r"(&other->window),
		  [open] "r"(open), [committed] "r"(committed)
		: "rax", "memory", "cc");
#elif defined(__aarch64__)
	uint64_t scratch;
	__asm__ __volatile__(
		".pushsection __rseq_cs, \"aw\"\n"
		".balign 32\n"
		"3: .long 0, 0\n"
		".quad 1f, 2f - 1f, 4f\n"
		".popsection\n"
		"adrp %[scratch], 3b\n"
		"add %[scratch], %[scratch], :lo12:3b\n"
		"str %[scratch], [%[rseq], #" STRINGIFY(RSEQ_CS_OFFSET) "]\n"
		"1: ldr %w[cid], [%[rseq], #" STRINGIFY(RSEQ_MM_CID_OFFSET) "]\n"
		"ldr %w[cpu], [%[rseq], #" STRINGIFY(RSEQ_CPU_ID_OFFSET) "]\n"
		"str %[open], [%[own]]\n"
		"5: subs %[spins], %[spins], #1\n"
		"b.ne 5b\n"
		"ldr %[other_window], [%[other]]\n"
		"str %[committed], [%[own]]\n"
		"2: mov %w[ok], #1\n"
		"b 6f\n"
		".inst " STRINGIFY(RSEQ_SIG_CODE) "\n"
		"4: mov %w[ok], #0\n"
		"6:\n"
		: [cid] "=&r"(*cid), [cpu] "=&r"(*cpu), [other_window] "=&r"(*other_window),
		  [ok] "=&r"(ok), [spins] "+r"(spins), [scratch] "=&r"(scratch)
		: [rseq] "r"(rseq), [own] "r"(&own->window), [other] "r"(&other->window),
		  [open] "r"(open), [committed] "r"(committed)
		: "memory", "cc");
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	uint64_t scratch;
	__asm__ __volatile__(
		".pushsection __rseq_cs, \"aw\"\n"
		".balign 32\n"
		"3: .long 0, 0\n"
		".quad 1f, 2f - 1f, 4f\n"
		".popsection\n"
		"lis %[scratch], (3b)@highest\n"
		"ori %[scratch], %[scratch], (3b)@higher\n"
		"rldicr %[scratch], %[scratch], 32, 31\n"
		"oris %[scratch], %[scratch], (3b)@high\n"
		"ori %[scratch], %[scratch], (3b)@l\n"
		"std %[scratch], " STRINGIFY(RSEQ_CS_OFFSET) "(%[rseq])\n"
		"1: lwz %[cid], " STRINGIFY(RSEQ_MM_CID_OFFSET) "(%[rseq])\n"
		"lwz %[cpu], " STRINGIFY(RSEQ_CPU_ID_OFFSET) "(%[rseq])\n"
		"std %[open], 0(%[own])\n"
		"5: addic. %[spins], %[spins], -1\n"
		"bne 5b\n"
		"ld %[other_window], 0(%[other])\n"
		"std %[committed], 0(%[own])\n"
		"2: li %[ok], 1\n"
		"b 6f\n"
		".long " STRINGIFY(RSEQ_SIG) "\n"
		"4: li %[ok], 0\n"
		"6:\n"
		: [cid] "=&r"(*cid), [cpu] "=&r"(*cpu), [other_window] "=&r"(*other_window),
		  [ok] "=&r"(ok), [spins] "+r"(spins), [scratch] "=&r"(scratch)
		: [rseq] "b"(rseq), [own] "b"(&own->window), [other] "b"(&other->window),
		  [open] "r"(open), [committed] "r"(committed)
		: "memory", "cr0");
#else
#error "no rseq critical section for this architecture"
#endif
	return ok;
}

static void report_violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void report_violation(const char *fmt, ...)
{
	if (atomic_fetch_add(&shared->violations_printed, 1) >= MAX_VIOLATION_LINES)
		return;
	char line[256];
	va_list args;
	va_start(args, fmt);
	vsnprintf(line, sizeof(line), fmt, args);
	va_end(args);
	printf(NAME ": VIOLATION %s\n", line);
}

static void count(_Atomic unsigned long *counter)
{
	atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

/* Settles an earlier sighting of another thread's open window, once that window has an outcome. */
static void resolve_pending(struct worker *self)
{
	struct pending_observation *seen = &self->pending;
	if (!seen->active)
		return;

	const struct slot *other = &slots[seen->slot];
	uint64_t window = atomic_load_explicit(&other->window, memory_order_acquire);
	uint64_t sample = atomic_load_explicit(&other->sample, memory_order_acquire);

	if ((uint32_t)(sample >> 32) == (uint32_t)seen->generation) {
		uint32_t other_cid = sample >> 16 & 0xffff, other_cpu = sample & 0xffff;
		seen->active = false;
		/* Two threads cannot run on one CPU at once: such a sighting proves nothing. */
		if (other_cpu == seen->cpu)
			return;
		count(&shared->overlaps);
		if (other_cid == seen->cid) {
			count(&shared->violations);
			report_violation("check=unique-cid cid=%u thread=%d cpu=%u thread=%d cpu=%u "
					 "(both running at once)", seen->cid, self->index, seen->cpu,
					 seen->slot, other_cpu);
		}
		return;
	}
	bool still_open = window >> 2 == seen->generation && (window & 3) != WINDOW_ABORTED;
	if (!still_open || ++seen->tries > PENDING_TRIES)
		seen->active = false;
}

static void check_window(struct worker *self)
{
	struct slot *own = &slots[self->index];
	uint64_t generation = (atomic_load_explicit(&own->window, memory_order_relaxed) >> 2) + 1;
	int other_index = next_random(&self->random_state) % slots_in_use;
	uint32_t cid, cpu;
	uint64_t other_window;

	if (other_index == self->index)
		other_index = (other_index + 1) % slots_in_use;
	if (!run_window(own, generation, &slots[other_index], &cid, &cpu, &other_window)) {
		atomic_store_explicit(&own->window, generation << 2 | WINDOW_ABORTED,
				      memory_order_release);
		count(&shared->aborted);
		return;
	}
	count(&shared->windows);
	if (cid >= possible_cpus) {
		count(&shared->violations);
		report_violation("check=cid-range cid=%u possible_cpus=%u thread=%d cpu=%u", cid,
				 possible_cpus, self->index, cpu);
		return;
	}
	atomic_store_explicit(&own->sample, generation << 32 | (uint64_t)cid << 16 | (cpu & 0xffff),
			      memory_order_release);

	if (self->pending.active || other_index == self->index)
		return;
	if ((other_window & 3) == WINDOW_OPEN)
		self->pending = (struct pending_observation){
			.active = true, .slot = other_index, .generation = other_window >> 2,
			.cid = cid, .cpu = cpu,
		};
}

static void sleep_briefly(void)
{
	struct timespec pause = { 0, sleep_us * 1000 };
	nanosleep(&pause, NULL);
}

static void wait_for_wakeup(void)
{
	struct timespec timeout = { 0, sleep_us * 1000 };
	uint32_t seen = atomic_load(&wake_word);
	syscall(SYS_futex, &wake_word, FUTEX_WAIT_PRIVATE, seen, &timeout, NULL, 0);
}

static void wake_all(void)
{
	atomic_fetch_add(&wake_word, 1);
	syscall(SYS_futex, &wake_word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static void *affinity_worker(void *arg)
{
	struct worker *self = arg;

	atomic_store(&self->tid, gettid());
	/*
	 * Below the thread that forks and joins: under TCG a waking thread of equal weight can wait
	 * most of a slice behind spinning workers, and the swings would slow to a crawl.
	 */
	setpriority(PRIO_PROCESS, 0, WORKER_NICE);
	while (!atomic_load_explicit(&self->stop, memory_order_relaxed)) {
		for (int i = 0; i < WINDOWS_PER_BURST; i++) {
			resolve_pending(self);
			check_window(self);
		}
		switch (next_random(&self->random_state) % 5) {
		case 0:
			sched_yield();
			break;
		case 1:
			sleep_briefly();
			break;
		case 2:
			wait_for_wakeup();
			break;
		default:
			/* Keep running. */
			break;
		}
	}
	return NULL;
}

static unsigned count_possible_cpus(void)
{
	FILE *file = fopen("/sys/devices/system/cpu/possible", "r");
	unsigned total = 0, first, last;

	if (!file)
		return 0;
	/* A list of ranges such as "0-3" or "0,2-5". */
	while (fscanf(file, "%u", &first) == 1) {
		last = first;
		int next = fgetc(file);
		if (next == '-' && fscanf(file, "%u", &last) != 1)
			break;
		if (next == '-')
			next = fgetc(file);
		total += last - first + 1;
		if (next != ',')
			break;
	}
	fclose(file);
	return total;
}

struct options {
	long seconds, min_threads, max_threads, max_extra, period_us, sleep_us, cycle_ms;
};

static int parse_number(const char *arg, const char *key, long min, long max, long *value)
{
	size_t key_length = strlen(key);
	if (strncmp(arg, key, key_length) != 0 || arg[key_length] != '=')
		return 0;
	const char *text = arg + key_length + 1;
	char *end;
	errno = 0;
	*value = strtol(text, &end, 10);
	if (errno || end == text || *end != '\0' || *value < min || *value > max) {
		fprintf(stderr, NAME ": bad value in '%s' (want %ld..%ld)\n", arg, min, max);
		return -1;
	}
	return 1;
}

static int parse_args(int argc, char **argv, struct options *options)
{
	for (int i = 1; i < argc; i++) {
		int matched = 0;
		matched = matched ?: parse_number(argv[i], "--seconds", 1, 86400, &options->seconds);
		matched = matched ?: parse_number(argv[i], "--min-threads", 1, MAX_THREADS,
						  &options->min_threads);
		matched = matched ?: parse_number(argv[i], "--max-threads", 2, MAX_THREADS,
						  &options->max_threads);
		matched = matched ?: parse_number(argv[i], "--max-extra", 0, MAX_THREADS,
						  &options->max_extra);
		matched = matched ?: parse_number(argv[i], "--period-us", 0, 1000000,
						  &options->period_us);
		matched = matched ?: parse_number(argv[i], "--sleep-us", 1, 999999,
						  &options->sleep_us);
		matched = matched ?: parse_number(argv[i], "--cycle-ms", 10, 60000,
						  &options->cycle_ms);
		if (matched < 0)
			return -1;
		if (!matched) {
			fprintf(stderr, NAME ": unknown argument '%s' (known: --seconds=N "
					"--min-threads=N --max-threads=N --max-extra=N --period-us=N "
					"--sleep-us=N --cycle-ms=N)\n", argv[i]);
			return -1;
		}
	}
	if (options->max_threads && options->max_extra >= 0) {
		fprintf(stderr, NAME ": --max-threads and --max-extra both set the most threads: "
				"give one\n");
		return -1;
	}
	return 0;
}

/* 77 if this kernel or libc gives the process no mm_cid to check, 0 if it does. */
static int check_rseq_support(void)
{
	if (__rseq_size == 0) {
		printf(NAME ": SKIP: glibc did not register rseq (kernel without CONFIG_RSEQ?)\n");
		return 77;
	}
	/*
	 * glibc before 2.40 reports __rseq_size 20 (the fields it knows) but registers a 32-byte area,
	 * the smallest the kernel accepts, so mm_cid is in it: the kernel's feature size decides.
	 */
	unsigned long feature_size = getauxval(AT_RSEQ_FEATURE_SIZE);
	if (feature_size < RSEQ_MM_CID_END) {
		printf(NAME ": SKIP: the kernel does not fill rseq mm_cid (rseq feature size %lu)\n",
		       feature_size);
		return 77;
	}
	return 0;
}

static double elapsed_seconds(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

static void pause_us(long microseconds)
{
	struct timespec pause = { microseconds / 1000000, microseconds % 1000000 * 1000 };
	if (microseconds > 0)
		nanosleep(&pause, NULL);
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
	struct worker *worker = &workers[cycle->free_list[--cycle->free_count]];
	worker->index = worker - workers;
	worker->random_state = next_random(&cycle->random_state) | 1;
	worker->pending.active = false;
	atomic_store(&worker->stop, false);
	atomic_store(&worker->tid, 0);
	int err = pthread_create(&worker->thread, NULL, affinity_worker, worker);
	if (err) {
		fprintf(stderr, NAME ": pthread_create: %s\n", strerror(err));
		cycle->free_count++;
		return false;
	}
	cycle->live[cycle->live_count++] = worker->index;
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
		pid_t tid = atomic_load(&workers[cycle->live[i]].tid);
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
static int run_cycle(const struct options *options, const cpu_set_t *born_on, bool use_cgroup,
		     uint32_t seed)
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
	while (!failed && elapsed_seconds(&start) * 1000 < options->cycle_ms) {
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
	struct options options = { .seconds = 30, .min_threads = 1, .max_extra = -1,
				   .period_us = 2000, .sleep_us = 50, .cycle_ms = 300 };

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse_args(argc, argv, &options) < 0)
		return 2;
	if (sched_getaffinity(0, sizeof(allowed_cpus), &allowed_cpus) < 0) {
		fprintf(stderr, NAME ": sched_getaffinity: %s\n", strerror(errno));
		return 1;
	}
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &allowed_cpus))
			allowed_cpu_list[allowed_cpu_count++] = cpu;
	if (!options.max_threads)
		options.max_threads = allowed_cpu_count + (options.max_extra >= 0 ? options.max_extra : 3);
	if (options.max_threads > MAX_THREADS || options.min_threads >= options.max_threads) {
		fprintf(stderr, NAME ": the range %ld..%ld threads is empty or above %d: check "
				"--min-threads, --max-threads and --max-extra\n", options.min_threads,
			options.max_threads, MAX_THREADS);
		return 2;
	}
	sleep_us = options.sleep_us;

	int support = check_rseq_support();
	if (support)
		return support;
	possible_cpus = count_possible_cpus();
	if (!possible_cpus) {
		fprintf(stderr, NAME ": cannot read /sys/devices/system/cpu/possible\n");
		return 1;
	}
	shared = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
		      0);
	if (shared == MAP_FAILED) {
		fprintf(stderr, NAME ": mmap: %s\n", strerror(errno));
		return 1;
	}
	slots_in_use = options.max_threads - 1;
	bool use_cgroup = create_cpuset_cgroup();
	printf(NAME ": %ld s, %d allowed CPUs, %u possible, %ld..%ld threads, cycles of %ld ms, "
	       "steps every %ld us, sleep %ld us, cpuset cgroup %s\n", options.seconds,
	       allowed_cpu_count, possible_cpus, options.min_threads, options.max_threads,
	       options.cycle_ms, options.period_us, options.sleep_us, use_cgroup ? "yes" : "no");

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
			_exit(run_cycle(&options, &born_on, use_cgroup, seed));
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
			       atomic_load(&shared->windows), atomic_load(&shared->aborted),
			       atomic_load(&shared->overlaps), atomic_load(&shared->violations));
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
	unsigned long violations = atomic_load(&shared->violations);
	failed |= violations > 0;
	printf(NAME ": %s after %.1f s: cycles=%lu (%.1f/s) affinity_steps=%lu widenings=%lu "
	       "cpuset_writes=%lu windows=%lu aborted=%lu overlaps=%lu violations=%lu\n",
	       failed ? "FAILED" : "done", elapsed, cycles, cycles / elapsed,
	       atomic_load(&shared->affinity_steps), atomic_load(&shared->widenings),
	       atomic_load(&shared->cpuset_writes), atomic_load(&shared->windows),
	       atomic_load(&shared->aborted), atomic_load(&shared->overlaps), violations);
	return failed;
}
