/*
 * Pure helpers of the ndx unikernel (see lib.h).
 */
#include "lib.h"

size_t ndx_strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int ndx_streq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

int ndx_memeq_str(const char *a, size_t alen, const char *b)
{
	size_t i;

	for (i = 0; i < alen; i++)
		if (b[i] == '\0' || b[i] != a[i])
			return 0;
	return b[alen] == '\0';
}

/* ---- CRC-32 ------------------------------------------------------------ */

uint32_t ndx_crc32(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint32_t c = ~crc;
	int k;

	while (len--) {
		c ^= *p++;
		for (k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
	}
	return ~c;
}

/* ---- command line ------------------------------------------------------ */

int ndx_parse_seconds(const char *s, size_t len, uint64_t *ns)
{
	uint64_t whole = 0, frac = 0, scale = NDX_NS_PER_SEC;
	size_t i = 0;
	int digits = 0;

	for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
		whole = whole * 10 + (uint64_t)(s[i] - '0');
		if (whole > 315360000ULL) /* ten years is plenty */
			return -1;
	}
	if (i < len && s[i] == '.') {
		for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
			if (scale > 1) {
				scale /= 10;
				frac += (uint64_t)(s[i] - '0') * scale;
			}
		}
	}
	if (i != len || digits == 0)
		return -1;
	*ns = whole * NDX_NS_PER_SEC + frac;
	return *ns ? 0 : -1;
}

static int key_value(const char *w, size_t len, const char *key,
		     const char **val, size_t *vlen)
{
	size_t k = ndx_strlen(key);

	if (len <= k || w[k] != '=')
		return 0;
	for (size_t i = 0; i < k; i++)
		if (w[i] != key[i])
			return 0;
	*val = w + k + 1;
	*vlen = len - k - 1;
	return 1;
}

/* "1" .. "100" (digits only). */
static int parse_percent(const char *s, size_t len, unsigned *pct)
{
	unsigned v = 0;

	if (len == 0 || len > 3)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v < 1 || v > 100)
		return -1;
	*pct = v;
	return 0;
}

static int parse_word(const char *w, size_t len, struct ndx_opts *o)
{
	const char *v;
	size_t vl;

	if (ndx_memeq_str(w, len, "ignore_shutdown")) {
		o->ignore_shutdown = 1;
		return 1;
	}
	if (ndx_memeq_str(w, len, "clickos")) {
		o->clickos = 1;
		return 1;
	}
	if (key_value(w, len, "poweroff_after", &v, &vl))
		return ndx_parse_seconds(v, vl, &o->poweroff_after_ns) == 0;
	if (key_value(w, len, "crash_after", &v, &vl))
		return ndx_parse_seconds(v, vl, &o->crash_after_ns) == 0;
	if (key_value(w, len, "tick", &v, &vl))
		return ndx_parse_seconds(v, vl, &o->tick_ns) == 0;
	if (ndx_memeq_str(w, len, "burn")) {
		o->burn_pct = 100;
		return 1;
	}
	if (key_value(w, len, "burn", &v, &vl))
		return parse_percent(v, vl, &o->burn_pct) == 0;
	return 0;
}

int ndx_parse_cmdline(const char *line, struct ndx_opts *opts,
		      ndx_word_cb unknown, void *ctx)
{
	int bad = 0;

	while (*line) {
		const char *w;
		size_t len = 0;

		while (*line == ' ' || *line == '\t' || *line == '\n')
			line++;
		if (!*line)
			break;
		w = line;
		while (w[len] && w[len] != ' ' && w[len] != '\t' && w[len] != '\n')
			len++;
		line = w + len;
		if (!parse_word(w, len, opts)) {
			bad++;
			if (unknown)
				unknown(ctx, w, len);
		}
	}
	return bad;
}

/* ---- formatting -------------------------------------------------------- */

struct sink {
	char *out;
	size_t cap;
	size_t n;
};

static void put(struct sink *s, char c)
{
	if (s->n + 1 < s->cap)
		s->out[s->n] = c;
	s->n++;
}

static void put_num(struct sink *s, uint64_t v, unsigned base, int neg,
		    int width, char pad)
{
	char tmp[24];
	int n = 0;

	do {
		unsigned d = (unsigned)(v % base);

		tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	if (neg)
		width--;
	if (neg && pad == '0')
		put(s, '-');
	for (; width > n; width--)
		put(s, pad);
	if (neg && pad != '0')
		put(s, '-');
	while (n)
		put(s, tmp[--n]);
}

size_t ndx_vfmt(char *out, size_t cap, const char *fmt, va_list ap)
{
	struct sink s = { out, cap, 0 };

	for (; *fmt; fmt++) {
		int width = 0, lng = 0, prec = -1;
		char pad = ' ';

		if (*fmt != '%') {
			put(&s, *fmt);
			continue;
		}
		fmt++;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (fmt[0] == '.' && fmt[1] == '*') {
			prec = va_arg(ap, int);
			fmt += 2;
		}
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case '%':
			put(&s, '%');
			break;
		case 'c':
			put(&s, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *str = va_arg(ap, const char *);
			int len = 0;

			if (!str)
				str = "(null)";
			while ((prec < 0 || len < prec) && str[len])
				len++;
			for (; width > len; width--)
				put(&s, ' ');
			while (len--)
				put(&s, *str++);
			break;
		}
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);

			put_num(&s, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v,
				10, v < 0, width, pad);
			break;
		}
		case 'u':
		case 'x': {
			uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);

			put_num(&s, v, *fmt == 'x' ? 16 : 10, 0, width, pad);
			break;
		}
		case '\0':
			fmt--;
			break;
		default:
			put(&s, '%');
			put(&s, *fmt);
			break;
		}
	}
	if (cap)
		out[s.n < cap ? s.n : cap - 1] = '\0';
	return s.n < cap ? s.n : (cap ? cap - 1 : 0);
}

size_t ndx_fmt(char *out, size_t cap, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = ndx_vfmt(out, cap, fmt, ap);
	va_end(ap);
	return n;
}
