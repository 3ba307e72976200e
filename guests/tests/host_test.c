/*
 * Host-side driver for the pure parts of the unikernel (src/lib.c).
 * Used by tests/check.py:
 *   host_test crc FILE [SPLIT]   CRC-32 of FILE (fed in SPLIT-byte pieces)
 *   host_test cmdline STRING     parsed options, one per line
 *   host_test fmt                formatting self-test (exit status)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lib.h"

static void unknown(void *ctx, const char *w, size_t len)
{
	(void)ctx;
	printf("unknown %.*s\n", (int)len, w);
}

static int do_crc(const char *path, size_t split)
{
	static unsigned char buf[1 << 22];
	FILE *f = fopen(path, "rb");
	size_t n, off = 0;
	uint32_t crc = 0;

	if (!f)
		return 2;
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	if (!split)
		split = n ? n : 1;
	while (off < n) {
		size_t k = n - off < split ? n - off : split;

		crc = ndx_crc32(crc, buf + off, k);
		off += k;
	}
	printf("%08x %zu\n", crc, n);
	return 0;
}

static int do_cmdline(const char *line)
{
	struct ndx_opts o;
	int bad;

	memset(&o, 0, sizeof(o));
	bad = ndx_parse_cmdline(line, &o, unknown, NULL);
	printf("poweroff_after_ns %llu\n", (unsigned long long)o.poweroff_after_ns);
	printf("crash_after_ns %llu\n", (unsigned long long)o.crash_after_ns);
	printf("tick_ns %llu\n", (unsigned long long)o.tick_ns);
	printf("ignore_shutdown %d\n", o.ignore_shutdown);
	printf("clickos %d\n", o.clickos);
	printf("burn_pct %u\n", o.burn_pct);
	printf("bad %d\n", bad);
	return 0;
}

static int expect(const char *got, const char *want)
{
	if (strcmp(got, want)) {
		fprintf(stderr, "fmt: got '%s' want '%s'\n", got, want);
		return 1;
	}
	return 0;
}

static int do_fmt(void)
{
	char b[64];
	int fails = 0;

	ndx_fmt(b, sizeof(b), "%08x", 0x1234abcdu);
	fails += expect(b, "1234abcd");
	ndx_fmt(b, sizeof(b), "%08x", 0xabu);
	fails += expect(b, "000000ab");
	ndx_fmt(b, sizeof(b), "%lu %d %u", 18446744073709551615UL, -42, 7u);
	fails += expect(b, "18446744073709551615 -42 7");
	ndx_fmt(b, sizeof(b), "[%s|%.*s|%c|%%]", "ab", 2, "xyz", 'q');
	fails += expect(b, "[ab|xy|q|%]");
	ndx_fmt(b, sizeof(b), "%5d|%03d", 12, -4);
	fails += expect(b, "   12|-04");
	ndx_fmt(b, 6, "%s", "truncated");
	fails += expect(b, "trunc");
	if (ndx_fmt(b, sizeof(b), "tick %lu", 3UL) != 6)
		fails++;
	return fails ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "crc"))
		return do_crc(argv[2], argc > 3 ? (size_t)atol(argv[3]) : 0);
	if (argc == 3 && !strcmp(argv[1], "cmdline"))
		return do_cmdline(argv[2]);
	if (argc == 2 && !strcmp(argv[1], "fmt"))
		return do_fmt();
	fprintf(stderr, "usage: host_test crc FILE [SPLIT] | cmdline STR | fmt\n");
	return 2;
}
