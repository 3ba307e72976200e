/*
 * Pure helpers of the ndx unikernel: no hypercalls, no libc.
 * Also compiled on the host by the unit tests (guests/tests/).
 */
#ifndef NDX_LIB_H
#define NDX_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define NDX_NS_PER_SEC 1000000000ULL

/* zlib-compatible CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320).
 * Start with crc = 0 and feed the running value back for each piece. */
uint32_t ndx_crc32(uint32_t crc, const void *buf, size_t len);

/* Options taken from the guest command line. A *_ns of 0 means "not set". */
struct ndx_opts {
	uint64_t poweroff_after_ns;
	uint64_t crash_after_ns;
	uint64_t tick_ns;
	int ignore_shutdown;
	int clickos;
	unsigned burn_pct; /* share of the CPU to burn, 1-100; 0 = idle when idle */
};

/* Called for each word that is not understood (word is not NUL-terminated). */
typedef void (*ndx_word_cb)(void *ctx, const char *word, size_t len);

/* Parse space/tab separated words; returns the number of words not understood. */
int ndx_parse_cmdline(const char *line, struct ndx_opts *opts,
		      ndx_word_cb unknown, void *ctx);

/* "5", "0.25", "10.000000001" -> nanoseconds. Returns 0 on success, -1 if
 * malformed, zero, or too large (over ~ 10 years). */
int ndx_parse_seconds(const char *s, size_t len, uint64_t *ns);

/* Minimal vsnprintf: %% %c %s %.*s %d %i %u %x, with l/ll/z, '0' flag and
 * width. Always NUL-terminates (if cap > 0); returns the length written. */
size_t ndx_vfmt(char *out, size_t cap, const char *fmt, va_list ap);
size_t ndx_fmt(char *out, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

size_t ndx_strlen(const char *s);
int ndx_streq(const char *a, const char *b);
/* Compare a counted string with a C string. */
int ndx_memeq_str(const char *a, size_t alen, const char *b);

#endif
