/*
 * Helpers any workload may use: argument values and choices, time, random numbers and problem
 * lines. The including file defines NAME, the workload's name, which starts its error messages.
 *
 * The functions are static inline so that a workload using only some of them still compiles under
 * -Wall -Werror.
 */
#ifndef LAB_WORKLOAD_H
#define LAB_WORKLOAD_H

#ifndef NAME
#error "define NAME, the workload's name, before including workload.h"
#endif

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* xorshift32: cheap enough for the workers' hot loops; a fixed seed repeats a run's choices. */
static inline uint32_t next_random(uint32_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 17;
	*state ^= *state << 5;
	return *state;
}

/*
 * 1 if @arg is `KEY=N` for @key with N in min..max (stored in @value), 0 if it is another
 * argument, -1 (after saying why) if the value is bad.
 */
static inline int parse_number(const char *arg, const char *key, long min, long max, long *value)
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

/*
 * 1 if @arg is `KEY=WORD` for @key with WORD one of the @count @choices (its position stored in
 * @index), 0 if it is another argument, -1 (after naming the choices) if WORD is none of them.
 */
static inline int parse_choice(const char *arg, const char *key, const char *const *choices,
			       int count, int *index)
{
	size_t key_length = strlen(key);
	if (strncmp(arg, key, key_length) != 0 || arg[key_length] != '=')
		return 0;
	for (int i = 0; i < count; i++) {
		if (strcmp(arg + key_length + 1, choices[i]) == 0) {
			*index = i;
			return 1;
		}
	}
	fprintf(stderr, NAME ": bad value in '%s' (want", arg);
	for (int i = 0; i < count; i++)
		fprintf(stderr, "%s %s", i == 0 ? "" : i == count - 1 ? " or" : ",", choices[i]);
	fprintf(stderr, ")\n");
	return -1;
}

/*
 * Prints `NAME: ` and the formatted line, unless @printed, a count every reporting thread and
 * process shares, has reached @most: a broken kernel can make a workload find thousands of
 * problems, and the console is slow.
 */
static inline void vprint_limited(_Atomic unsigned long *printed, unsigned long most,
				  const char *fmt, va_list args)
{
	if (atomic_fetch_add(printed, 1) >= most)
		return;
	char line[512];
	vsnprintf(line, sizeof(line), fmt, args);
	printf(NAME ": %s\n", line);
}

static inline void print_limited(_Atomic unsigned long *printed, unsigned long most,
				 const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void print_limited(_Atomic unsigned long *printed, unsigned long most,
				 const char *fmt, ...)
{
	va_list args;
	va_start(args, fmt);
	vprint_limited(printed, most, fmt, args);
	va_end(args);
}

static inline double elapsed_seconds(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

static inline void pause_us(long microseconds)
{
	struct timespec pause = { microseconds / 1000000, microseconds % 1000000 * 1000 };
	if (microseconds > 0)
		nanosleep(&pause, NULL);
}

#endif
