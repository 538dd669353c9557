/*
 * What the mm_cid workloads (mmcid-churn, mmcid-affinity) share: the rseq critical section each
 * worker runs its windows in, the slot table the workers watch each other through, the two checks
 * on the mm_cid the kernel stores in each thread's rseq area, the workers' loop, and the setup
 * both do before they start. The workloads differ in how they make the kernel switch CID modes.
 *
 * Check (a): mm_cid is below the number of possible CPUs. Check (b): no two threads of the process
 * hold the same one while both are running; see run_window() for how it avoids false alarms.
 *
 * The including file defines NAME and includes workload.h first.
 */
#ifndef LAB_MMCID_CHECK_H
#define LAB_MMCID_CHECK_H

#ifndef LAB_WORKLOAD_H
#error "include workload.h before mmcid_check.h"
#endif

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

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

struct mmcid_counters {
	_Atomic unsigned long windows, aborted, overlaps, violations;
};

struct worker {
	pthread_t thread;
	int index;
	_Atomic bool stop;
	uint32_t random_state;
	struct pending_observation pending;
	/* Per worker in mmcid-churn; one set for all of mmcid-affinity's processes. */
	struct mmcid_counters *counters;
};

static struct slot slots[MAX_THREADS];
static struct worker workers[MAX_THREADS];
static int slots_in_use;
static unsigned possible_cpus;
static cpu_set_t allowed_cpus;
static int allowed_cpu_list[CPU_SETSIZE];
static int allowed_cpu_count;
static long sleep_us;
static _Atomic uint32_t wake_word;
/* The VIOLATION lines printed: a workload that forks points this at memory its processes share. */
static _Atomic unsigned long violations_printed_here;
static _Atomic unsigned long *violations_printed = &violations_printed_here;

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
		count(&self->counters->overlaps);
		if (other_cid == seen->cid) {
			count(&self->counters->violations);
			print_limited(violations_printed, MAX_VIOLATION_LINES,
				      "VIOLATION check=unique-cid cid=%u thread=%d cpu=%u thread=%d "
				      "cpu=%u (both running at once)", seen->cid, self->index,
				      seen->cpu, seen->slot, other_cpu);
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
		count(&self->counters->aborted);
		return;
	}
	count(&self->counters->windows);
	if (cid >= possible_cpus) {
		count(&self->counters->violations);
		print_limited(violations_printed, MAX_VIOLATION_LINES,
			      "VIOLATION check=cid-range cid=%u possible_cpus=%u thread=%d cpu=%u", cid,
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


/*
 * A worker's life: bursts of windows, between them a yield, a sleep, a futex wait, the workload's
 * own @move (when not NULL) or nothing, at random.
 */
static void run_worker(struct worker *self, void (*move)(struct worker *))
{
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
		switch (next_random(&self->random_state) % (move ? 6 : 5)) {
		case 0:
			sched_yield();
			break;
		case 1:
			sleep_briefly();
			break;
		case 2:
			wait_for_wakeup();
			break;
		case 3:
			if (move) {
				move(self);
				break;
			}
			/* fallthrough */
		default:
			/* Keep running. */
			break;
		}
	}
}

/* Starts workers[@index] on @body; false, after saying why, if it cannot. */
static bool spawn_worker(int index, uint32_t random_state, struct mmcid_counters *counters,
			 void *(*body)(void *))
{
	struct worker *worker = &workers[index];
	worker->index = index;
	worker->random_state = random_state;
	worker->pending.active = false;
	worker->counters = counters;
	atomic_store(&worker->stop, false);
	int err = pthread_create(&worker->thread, NULL, body, worker);
	if (err) {
		fprintf(stderr, NAME ": pthread_create: %s\n", strerror(err));
		return false;
	}
	return true;
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

/* The arguments both workloads take. */
struct mmcid_options {
	long seconds, min_threads, max_threads, max_extra, period_us, sleep_us;
};

#define MMCID_DEFAULTS \
	{ .seconds = 30, .min_threads = 1, .max_extra = -1, .period_us = 2000, .sleep_us = 50 }
#define MMCID_USAGE \
	"--seconds=N --min-threads=N --max-threads=N --max-extra=N --period-us=N --sleep-us=N"

/* As parse_number(), for any of the arguments both workloads take. */
static int parse_mmcid_option(const char *arg, struct mmcid_options *options)
{
	int matched = parse_number(arg, "--seconds", 1, 86400, &options->seconds);
	matched = matched ?: parse_number(arg, "--min-threads", 1, MAX_THREADS,
					  &options->min_threads);
	matched = matched ?: parse_number(arg, "--max-threads", 2, MAX_THREADS,
					  &options->max_threads);
	matched = matched ?: parse_number(arg, "--max-extra", 0, MAX_THREADS, &options->max_extra);
	matched = matched ?: parse_number(arg, "--period-us", 0, 1000000, &options->period_us);
	matched = matched ?: parse_number(arg, "--sleep-us", 1, 999999, &options->sleep_us);
	return matched;
}

/*
 * What both workloads settle before they start: the thread range from the arguments (@range and
 * @top name it and its top in messages), the allowed and possible CPUs, and whether there is an
 * mm_cid to check. Returns 0 to go on, else the exit code.
 */
static int prepare_mmcid(struct mmcid_options *options, const char *range, const char *top)
{
	if (options->max_threads && options->max_extra >= 0) {
		fprintf(stderr, NAME ": --max-threads and --max-extra both set %s: give one\n", top);
		return 2;
	}
	if (sched_getaffinity(0, sizeof(allowed_cpus), &allowed_cpus) < 0) {
		fprintf(stderr, NAME ": sched_getaffinity: %s\n", strerror(errno));
		return 1;
	}
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &allowed_cpus))
			allowed_cpu_list[allowed_cpu_count++] = cpu;
	if (!options->max_threads)
		options->max_threads =
			allowed_cpu_count + (options->max_extra >= 0 ? options->max_extra : 3);
	if (options->max_threads > MAX_THREADS || options->min_threads >= options->max_threads) {
		fprintf(stderr, NAME ": %s %ld..%ld threads is empty or above %d: check "
				"--min-threads, --max-threads and --max-extra\n", range,
			options->min_threads, options->max_threads, MAX_THREADS);
		return 2;
	}
	sleep_us = options->sleep_us;

	int support = check_rseq_support();
	if (support)
		return support;
	possible_cpus = count_possible_cpus();
	if (!possible_cpus) {
		fprintf(stderr, NAME ": cannot read /sys/devices/system/cpu/possible\n");
		return 1;
	}
	return 0;
}

#endif
