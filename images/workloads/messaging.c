/*
 * messaging: scheduler load in the spirit of hackbench. Groups of sender and receiver tasks pass
 * fixed-size messages over pipes or AF_UNIX stream socketpairs: every receiver owns one channel,
 * every sender of its group writes to each receiver in turn, and receivers block in read(). The
 * scheduler sees many short sleeps and wakeups across CPUs, with no mm_cid focus.
 *
 * Every message carries its sender, its receiver, a sequence number per sender and receiver and a
 * checksum; when the time is up each sender ends every channel with a marker carrying how many
 * messages it sent there. A receiver reads to end of file and checks that each sender's messages
 * arrived whole, once each, in order and all of them: a lost, repeated, reordered, corrupted or
 * truncated message prints a line and the workload exits 1.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "messaging"
#include "workload.h"

#define USAGE "--mode=pipe|socket --tasks=thread|process --groups=N --fds=N --seconds=N --size=BYTES"
#define MAX_FDS 64
#define DEFAULT_FDS 8
/* Two file descriptors a channel, below the guest's default limit of 1024 open files. */
#define MAX_CHANNELS 400
#define MAX_REPORT_LINES 10
/* With messages flowing between every pair of tasks, this long without one is a hang. */
#define STALL_SECONDS 30
#define POLL_US 100000
#define THREAD_STACK_BYTES (256 * 1024)
#define MESSAGE_MAGIC 0x4c41424dU /* "LABM" */

enum mode { MODE_PIPE, MODE_SOCKET };
enum tasks { TASKS_THREAD, TASKS_PROCESS };
static const char *const mode_names[] = { "pipe", "socket" };
static const char *const tasks_names[] = { "thread", "process" };

enum kind { KIND_DATA = 1, KIND_END = 2 };

/*
 * The start of every message; pseudo-random bytes derived from the header fill the rest. A message
 * is at most PIPE_BUF bytes: one write(2) the kernel keeps whole between concurrent writers, for a
 * pipe by POSIX and for an AF_UNIX stream socket because it queues it as one buffer.
 */
struct header {
	uint32_t checksum; /* FNV-1a of every byte after this field */
	uint32_t magic;
	uint16_t group, sender, receiver, kind;
	/* DATA: 1, 2, ... per sender and receiver. END: how many DATA messages went before it. */
	uint64_t sequence;
};

struct options {
	int mode, tasks;
	long groups, fds, seconds, size;
};

struct counter {
	_Alignas(64) _Atomic unsigned long received;
};

/* In memory that the processes of --tasks=process share as well as threads do. */
struct shared {
	_Atomic bool stop;
	_Atomic unsigned long problems;
	_Atomic int senders_done, receivers_done;
	struct counter received[];
};

struct task {
	bool sender;
	int group, index;
	pid_t pid;
	pthread_t thread;
};

static struct options options;
static struct shared *shared;
/* Per receiver: [0] its read end, [1] the write end its group's senders share. */
static int (*channels)[2];
/* Tasks block reading it until every one has started, so the last forks do not wait on the first. */
static int start_gate[2];

static int receiver_index(int group, int receiver)
{
	return group * options.fds + receiver;
}

static uint32_t checksum(const unsigned char *bytes, size_t length)
{
	uint32_t hash = 2166136261U;
	for (size_t i = 0; i < length; i++) {
		hash ^= bytes[i];
		hash *= 16777619U;
	}
	return hash;
}

static void build_message(unsigned char *message, const struct header *fields)
{
	struct header header = *fields;
	uint32_t state = (uint32_t)header.sequence * 2654435761U ^
			 (uint32_t)header.group << 20 ^ (uint32_t)header.sender << 10 ^
			 header.receiver ^ (uint32_t)header.kind << 30;
	state |= 1;
	header.magic = MESSAGE_MAGIC;
	for (size_t at = sizeof(header); at < (size_t)options.size; at += sizeof(uint32_t)) {
		uint32_t word = next_random(&state);
		size_t left = options.size - at;
		memcpy(message + at, &word, left < sizeof(word) ? left : sizeof(word));
	}
	memcpy(message, &header, sizeof(header));
	header.checksum = checksum(message + sizeof(uint32_t), options.size - sizeof(uint32_t));
	memcpy(message, &header.checksum, sizeof(header.checksum));
}

/* One line per problem, at most MAX_REPORT_LINES in all tasks; any problem ends the run early. */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
	va_list args;
	va_start(args, fmt);
	vprint_limited(&shared->problems, MAX_REPORT_LINES, fmt, args);
	va_end(args);
	atomic_store(&shared->stop, true);
}

static int write_all(int fd, const unsigned char *bytes, size_t length)
{
	for (size_t done = 0; done < length;) {
		ssize_t n = write(fd, bytes + done, length - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += n;
	}
	return 0;
}

/* The bytes read before end of file: length, 0 at a clean end, in between for a truncated one. */
static ssize_t read_full(int fd, unsigned char *bytes, size_t length)
{
	size_t done = 0;
	while (done < length) {
		ssize_t n = read(fd, bytes + done, length - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		done += n;
	}
	return done;
}

/* Writes one message; a receiver that cannot be written to is reported once and left out. */
static void send_message(const struct task *self, unsigned char *message,
			 const struct header *header, bool *broken)
{
	if (broken[header->receiver])
		return;
	build_message(message, header);
	if (write_all(channels[receiver_index(self->group, header->receiver)][1], message,
		      options.size) == 0)
		return;
	report("FAIL sender %d of group %d: %s to receiver %d: %s", self->index, self->group,
	       header->kind == KIND_END ? "end marker" : "write", header->receiver, strerror(errno));
	broken[header->receiver] = true;
}

static void run_sender(const struct task *self)
{
	unsigned char *message = malloc(options.size);
	uint64_t sent[MAX_FDS] = { 0 };
	bool broken[MAX_FDS] = { false };
	struct header header = { .group = self->group, .sender = self->index, .kind = KIND_DATA };

	if (!message) {
		report("FAIL sender %d of group %d: out of memory", self->index, self->group);
		goto out;
	}
	while (!atomic_load_explicit(&shared->stop, memory_order_relaxed)) {
		for (int receiver = 0; receiver < options.fds; receiver++) {
			header.receiver = receiver;
			header.sequence = ++sent[receiver];
			send_message(self, message, &header, broken);
		}
	}
	header.kind = KIND_END;
	for (int receiver = 0; receiver < options.fds; receiver++) {
		header.receiver = receiver;
		header.sequence = sent[receiver];
		send_message(self, message, &header, broken);
	}
out:
	free(message);
	atomic_fetch_add(&shared->senders_done, 1);
}

struct receiver_state {
	const struct task *self;
	uint64_t next[MAX_FDS];
	bool ended[MAX_FDS];
	unsigned long messages;
};

/* Checks one message against what its sender's earlier ones promise; true if it is data. */
static bool check_message(struct receiver_state *state, const unsigned char *message)
{
	const struct task *self = state->self;
	struct header header;
	memcpy(&header, message, sizeof(header));
	uint32_t sum = checksum(message + sizeof(uint32_t), options.size - sizeof(uint32_t));
	unsigned long at = state->messages + 1;

	if (sum != header.checksum || header.magic != MESSAGE_MAGIC) {
		report("CORRUPT group=%d receiver=%d message=%lu: checksum %08x, computed %08x, "
		       "magic %08x", self->group, self->index, at, header.checksum, sum, header.magic);
		return false;
	}
	if (header.group != self->group || header.receiver != self->index ||
	    header.sender >= options.fds || (header.kind != KIND_DATA && header.kind != KIND_END)) {
		report("MISDELIVERED group=%d receiver=%d message=%lu: says group=%u receiver=%u "
		       "sender=%u kind=%u", self->group, self->index, at, header.group,
		       header.receiver, header.sender, header.kind);
		return false;
	}
	int sender = header.sender;
	uint64_t expected = state->next[sender];
	if (state->ended[sender]) {
		report("AFTER-END group=%d receiver=%d sender=%d message=%lu: sequence %llu after "
		       "the end marker", self->group, self->index, sender, at,
		       (unsigned long long)header.sequence);
		return false;
	}
	if (header.kind == KIND_END) {
		state->ended[sender] = true;
		if (header.sequence != expected - 1)
			report("LOST group=%d receiver=%d sender=%d: sent %llu, received up to %llu",
			       self->group, self->index, sender, (unsigned long long)header.sequence,
			       (unsigned long long)(expected - 1));
		return false;
	}
	if (header.sequence != expected)
		report("%s group=%d receiver=%d sender=%d message=%lu: sequence %llu, expected %llu",
		       header.sequence > expected ? "LOST" : "REPEATED", self->group, self->index,
		       sender, at, (unsigned long long)header.sequence,
		       (unsigned long long)expected);
	/* Resynchronized, so one gap is one line rather than one per message that follows it. */
	state->next[sender] = header.sequence + 1;
	return true;
}

static void run_receiver(const struct task *self)
{
	unsigned char *message = malloc(options.size);
	struct receiver_state state = { .self = self };
	struct counter *counter = &shared->received[receiver_index(self->group, self->index)];
	int fd = channels[receiver_index(self->group, self->index)][0];

	if (!message) {
		report("FAIL receiver %d of group %d: out of memory", self->index, self->group);
		goto out;
	}
	for (int sender = 0; sender < options.fds; sender++)
		state.next[sender] = 1;
	/* To end of file, even after a problem: senders blocked on a full channel must finish. */
	for (;;) {
		ssize_t got = read_full(fd, message, options.size);
		if (got < 0) {
			report("FAIL receiver %d of group %d: read: %s", self->index, self->group,
			       strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		if (got < options.size) {
			report("TRUNCATED group=%d receiver=%d: %zd of %ld bytes before end of file",
			       self->group, self->index, got, options.size);
			break;
		}
		if (check_message(&state, message))
			atomic_fetch_add_explicit(&counter->received, 1, memory_order_relaxed);
		state.messages++;
	}
	for (int sender = 0; sender < options.fds; sender++)
		if (!state.ended[sender])
			report("NO-END group=%d receiver=%d sender=%d: end of file without the end "
			       "marker, after sequence %llu", self->group, self->index, sender,
			       (unsigned long long)(state.next[sender] - 1));
out:
	free(message);
	atomic_fetch_add(&shared->receivers_done, 1);
}

static void *run_task(void *arg)
{
	const struct task *self = arg;
	char byte;
	while (read(start_gate[0], &byte, 1) < 0 && errno == EINTR)
		;
	if (self->sender)
		run_sender(self);
	else
		run_receiver(self);
	return NULL;
}

/* A process keeps only its own channel ends: one reaches end of file when its senders are gone. */
static void keep_own_fds(const struct task *self)
{
	close(start_gate[1]);
	for (int group = 0; group < options.groups; group++) {
		for (int receiver = 0; receiver < options.fds; receiver++) {
			int *ends = channels[receiver_index(group, receiver)];
			if (!self->sender || group != self->group)
				close(ends[1]);
			if (self->sender || group != self->group || receiver != self->index)
				close(ends[0]);
		}
	}
}

static int start_task(struct task *task, const pthread_attr_t *attr)
{
	if (options.tasks == TASKS_THREAD) {
		int err = pthread_create(&task->thread, attr, run_task, task);
		if (err)
			errno = err;
		return err ? -1 : 0;
	}
	task->pid = fork();
	if (task->pid < 0)
		return -1;
	if (task->pid == 0) {
		keep_own_fds(task);
		run_task(task);
		_exit(0);
	}
	return 0;
}

static int open_channel(int ends[2])
{
	if (options.mode == MODE_PIPE)
		return pipe(ends);
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0)
		return -1;
	ends[0] = pair[0];
	ends[1] = pair[1];
	return 0;
}

static int parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		int matched = parse_choice(arg, "--mode", mode_names, 2, &options.mode);
		if (!matched)
			matched = parse_choice(arg, "--tasks", tasks_names, 2, &options.tasks);
		if (!matched)
			matched = parse_number(arg, "--groups", 1, MAX_CHANNELS, &options.groups);
		if (!matched)
			matched = parse_number(arg, "--fds", 1, MAX_FDS, &options.fds);
		if (!matched)
			matched = parse_number(arg, "--seconds", 1, 86400, &options.seconds);
		if (!matched)
			matched = parse_number(arg, "--size", sizeof(struct header), PIPE_BUF,
					       &options.size);
		if (matched < 0)
			return -1;
		if (!matched) {
			fprintf(stderr, NAME ": unknown argument '%s' (known: " USAGE ")\n", arg);
			return -1;
		}
	}
	if (options.groups * options.fds > MAX_CHANNELS) {
		fprintf(stderr, NAME ": --groups=%ld with --fds=%ld makes %ld receivers, at most %d\n",
			options.groups, options.fds, options.groups * options.fds, MAX_CHANNELS);
		return -1;
	}
	return 0;
}

static unsigned long total_received(int receivers)
{
	unsigned long total = 0;
	for (int i = 0; i < receivers; i++)
		total += atomic_load_explicit(&shared->received[i].received, memory_order_relaxed);
	return total;
}

/* Reaps the processes that ended; one that did not end cleanly is a problem. */
static void reap_processes(struct task *tasks, int count)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < count; i++) {
			struct task *task = &tasks[i];
			if (task->pid != pid)
				continue;
			task->pid = 0;
			if (WIFSIGNALED(status))
				report("FAIL %s %d of group %d killed by signal %d",
				       task->sender ? "sender" : "receiver", task->index, task->group,
				       WTERMSIG(status));
			else if (WEXITSTATUS(status))
				report("FAIL %s %d of group %d exited with %d",
				       task->sender ? "sender" : "receiver", task->index, task->group,
				       WEXITSTATUS(status));
		}
	}
}

/* All stopped first: one that outlived another would report the broken channel. */
static void kill_processes(const struct task *tasks, int count)
{
	for (int i = 0; i < count; i++)
		if (tasks[i].pid > 0)
			kill(tasks[i].pid, SIGSTOP);
	for (int i = 0; i < count; i++)
		if (tasks[i].pid > 0)
			kill(tasks[i].pid, SIGKILL);
	for (int i = 0; i < count; i++)
		if (tasks[i].pid > 0)
			waitpid(tasks[i].pid, NULL, 0);
}

static int processes_left(const struct task *tasks, int count)
{
	int left = 0;
	for (int i = 0; i < count; i++)
		left += tasks[i].pid > 0;
	return left;
}

static long default_groups(void)
{
	const char *cpus = getenv("LAB_CPUS");
	long groups = cpus ? atol(cpus) : sysconf(_SC_NPROCESSORS_ONLN);
	long most = MAX_CHANNELS / DEFAULT_FDS;
	return groups < 1 ? 1 : groups > most ? most : groups;
}

int main(int argc, char **argv)
{
	/*
	 * hackbench's processes and message size, but pipes (sockets need CONFIG_NET and CONFIG_UNIX,
	 * which not every kernel has), one group per CPU rather than 10 and 8 tasks a side rather than 20.
	 */
	options = (struct options){ .mode = MODE_PIPE, .tasks = TASKS_PROCESS,
				    .groups = default_groups(), .fds = DEFAULT_FDS,
				    .seconds = 10, .size = 100 };
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (parse_args(argc, argv) < 0)
		return 2;
	/* A receiver that died must show as its own problem, not as its senders' SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	int receivers = options.groups * options.fds, task_count = 2 * receivers;
	size_t shared_size = sizeof(*shared) + receivers * sizeof(struct counter);
	shared = mmap(NULL, shared_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	channels = calloc(receivers, sizeof(*channels));
	struct task *tasks = calloc(task_count, sizeof(*tasks));
	if (shared == MAP_FAILED || !channels || !tasks) {
		fprintf(stderr, NAME ": out of memory for %d tasks\n", task_count);
		return 1;
	}
	if (pipe(start_gate) < 0) {
		fprintf(stderr, NAME ": pipe for the start: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < receivers; i++) {
		if (open_channel(channels[i]) == 0)
			continue;
		/* ENOSYS: no socket calls at all (CONFIG_NET off, as in a plain tinyconfig kernel). */
		if (options.mode == MODE_SOCKET &&
		    (errno == ENOSYS || errno == EAFNOSUPPORT || errno == EPROTONOSUPPORT)) {
			printf(NAME ": skipped: the kernel has no AF_UNIX sockets (CONFIG_NET, "
			       "CONFIG_UNIX): socketpair: %s\n", strerror(errno));
			return 77;
		}
		fprintf(stderr, NAME ": %s for channel %d of %d: %s\n", mode_names[options.mode],
			i + 1, receivers, strerror(errno));
		return 1;
	}
	printf(NAME ": %ld s, %s, %s tasks, %ld groups of %ld senders and %ld receivers, "
	       "%ld-byte messages\n", options.seconds, mode_names[options.mode], tasks_names[options.tasks], options.groups,
	       options.fds, options.fds, options.size);

	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
	for (int i = 0; i < task_count; i++) {
		int channel = i / 2;
		struct task *task = &tasks[i];
		*task = (struct task){ .sender = i % 2, .group = channel / options.fds,
				       .index = channel % options.fds };
		/* Forked children must not inherit stdout lines still in the buffer. */
		fflush(stdout);
		if (start_task(task, &attr) == 0)
			continue;
		fprintf(stderr, NAME ": cannot start %s %d of group %d: %s\n",
			task->sender ? "sender" : "receiver", task->index, task->group,
			strerror(errno));
		if (options.tasks == TASKS_PROCESS)
			kill_processes(tasks, task_count);
		return 1;
	}
	close(start_gate[1]);

	/*
	 * The tasks hold their own copies: a channel reaches end of file when its senders have gone,
	 * and senders writing to a receiver that died get EPIPE rather than block on a full channel.
	 */
	bool write_ends_open = options.tasks == TASKS_THREAD;
	if (options.tasks == TASKS_PROCESS) {
		close(start_gate[0]);
		for (int i = 0; i < receivers; i++) {
			close(channels[i][0]);
			close(channels[i][1]);
		}
	}

	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	unsigned long last_total = 0, reported_total = 0;
	double last_change_s = 0, reported_s = 0;
	long reported_second = 0;
	for (;;) {
		if (options.tasks == TASKS_PROCESS)
			reap_processes(tasks, task_count);
		double now_s = elapsed_seconds(&start);
		if (now_s >= options.seconds)
			atomic_store(&shared->stop, true);
		int senders_done = atomic_load(&shared->senders_done);
		int receivers_done = atomic_load(&shared->receivers_done);
		/* The threads' write ends: now the receivers read to end of file. */
		if (write_ends_open && senders_done == receivers) {
			for (int i = 0; i < receivers; i++)
				close(channels[i][1]);
			write_ends_open = false;
		}
		/* A process that died never counts itself done. */
		if (options.tasks == TASKS_THREAD ? receivers_done == receivers
						  : processes_left(tasks, task_count) == 0)
			break;

		unsigned long total = total_received(receivers);
		unsigned long activity = total + senders_done + receivers_done;
		if (activity != last_total) {
			last_total = activity;
			last_change_s = now_s;
		} else if (now_s - last_change_s >= STALL_SECONDS) {
			report("STALLED: no message for %d s: %lu delivered, senders done %d of %d, "
			       "receivers done %d of %d", STALL_SECONDS, total, senders_done, receivers,
			       receivers_done, receivers);
			if (options.tasks == TASKS_PROCESS)
				kill_processes(tasks, task_count);
			/* Threads blocked in the kernel end with the process. */
			return 1;
		}
		if ((long)now_s > reported_second) {
			reported_second = now_s;
			printf("LAB-PROGRESS workload=" NAME " elapsed_s=%ld messages=%lu "
			       "msgs_per_s=%.0f problems=%lu\n", reported_second, total,
			       (total - reported_total) / (now_s - reported_s),
			       atomic_load(&shared->problems));
			reported_total = total;
			reported_s = now_s;
		}
		pause_us(POLL_US);
	}
	if (options.tasks == TASKS_THREAD)
		for (int i = 0; i < task_count; i++)
			pthread_join(tasks[i].thread, NULL);

	double took_s = elapsed_seconds(&start);
	unsigned long total = total_received(receivers), problems = atomic_load(&shared->problems);
	printf(NAME ": %s after %.1f s: messages=%lu msgs_per_s=%.0f problems=%lu\n",
	       problems ? "FAILED" : "done", took_s, total, total / took_s, problems);
	return problems ? 1 : 0;
}
