/*
 * ndx-unikernel: a minimal x86_64 PV guest for testing nomad-driver-xen.
 *
 * One vCPU, no interrupts: event upcalls stay masked and the guest waits
 * with SCHEDOP_poll on its event channels (with a timeout for timers), so an
 * idle guest costs no CPU. It talks to xenconsoled through the PV console
 * ring and to xenstored through the XenStore ring.
 */
#include "xen_abi.h"
#include "lib.h"

#ifndef NDX_VERSION
#define NDX_VERSION "dev"
#endif

#define PAGE_SIZE 4096
#define SEC NDX_NS_PER_SEC
/* burn=<pct> spins for pct % of every period and sleeps the rest. */
#define BURN_PERIOD (SEC / 10)

#define TOKEN_SHUTDOWN "ndx-shutdown"
#define TOKEN_CLICKOS  "ndx-clickos"

#define ERR_NOENT (-2)
#define ERR_OTHER (-5)

long hypercall(long nr, long a1, long a2, long a3, long a4);
void ndx_main(const struct start_info *start);

/* Page-aligned slots whose mappings are replaced by the shared info page and
 * the two ring pages. */
static uint8_t map_slots[3][PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

static volatile struct shared_info *shinfo;
static volatile struct cons_ring *cons;
static volatile struct xs_ring *xs;
static uint32_t cons_port, xs_port;
static int cons_stuck;

static struct ndx_opts opts;
static int ev_shutdown, ev_clickos;

/* ---- libc bits the compiler may call ------------------------------------ */

void *memcpy(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;

	if (d < s)
		return memcpy(dst, src, n);
	while (n--)
		d[n] = s[n];
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	uint8_t *d = dst;

	while (n--)
		*d++ = (uint8_t)c;
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

/* ---- low level ----------------------------------------------------------- */

static inline void mb(void)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline void barrier(void)
{
	__asm__ __volatile__("" ::: "memory");
}

static inline void cpu_relax(void)
{
	__asm__ __volatile__("pause" ::: "memory");
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static __attribute__((noreturn)) void hard_stop(unsigned reason)
{
	struct sched_shutdown arg = { reason };

	for (;;)
		hypercall(HC_sched_op, SCHED_shutdown, (long)&arg, 0, 0);
}

static int map_frame(void *va, uint64_t maddr)
{
	uint64_t pte = (maddr & ~(uint64_t)(PAGE_SIZE - 1)) | PTE_PRESENT |
		       PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY;

	return (int)hypercall(HC_update_va_mapping, (long)va, (long)pte,
			      UVM_INVLPG, 0);
}

/* Xen system time in ns, from the vCPU time record and the TSC. */
static uint64_t now_ns(void)
{
	volatile struct vcpu_time *t = &shinfo->vcpu[0].time;
	uint32_t ver, mul;
	uint64_t stamp, sys, delta;
	int8_t shift;

	do {
		ver = t->version;
		mb();
		stamp = t->tsc_timestamp;
		sys = t->system_time;
		mul = t->tsc_to_system_mul;
		shift = t->tsc_shift;
		mb();
	} while ((ver & 1) || ver != t->version);

	delta = rdtsc() - stamp;
	if (shift < 0)
		delta >>= -shift;
	else
		delta <<= shift;
	return sys + (uint64_t)(((unsigned __int128)delta * mul) >> 32);
}

static void evtchn_notify(uint32_t port)
{
	struct evtchn_send_arg arg = { port };

	hypercall(HC_event_channel_op, EVTCHN_send, (long)&arg, 0, 0);
}

static void evtchn_clear(uint32_t port)
{
	__atomic_fetch_and(&shinfo->evtchn_pending[port / 64],
			   ~(1ULL << (port % 64)), __ATOMIC_SEQ_CST);
}

/* Sleep until the port is pending or Xen system time reaches deadline (0 =
 * no deadline). Callers clear the pending bit before they look at the ring,
 * so a notification that comes in between is never lost. */
static void wait_port(uint32_t port, uint64_t deadline)
{
	uint32_t ports[1] = { port };
	struct sched_poll p = { ports, 1, 0, deadline };

	if (hypercall(HC_sched_op, SCHED_poll, (long)&p, 0, 0) < 0)
		hypercall(HC_sched_op, 0 /* yield */, 0, 0, 0);
}

/* ---- console ------------------------------------------------------------- */

static void cons_put(const char *s, size_t n)
{
	uint64_t give_up = 0;

	if (!cons) {
		hypercall(HC_console_io, CONSIO_write, (long)n, (long)s, 0);
		return;
	}
	while (n) {
		uint32_t c, p, used;

		evtchn_clear(cons_port);
		c = cons->out_cons;
		p = cons->out_prod;
		mb();
		used = p - c;
		if (used >= CONS_OUT_SIZE) {
			/* Ring full: xenconsoled is behind (or absent). Wait a
			 * while, then drop output rather than hang forever. */
			uint64_t t = now_ns();

			if (cons_stuck)
				return;
			if (!give_up)
				give_up = t + 2 * SEC;
			if (t >= give_up) {
				cons_stuck = 1;
				return;
			}
			evtchn_notify(cons_port);
			wait_port(cons_port, give_up);
			continue;
		}
		give_up = 0;
		cons_stuck = 0;
		for (; used < CONS_OUT_SIZE && n; used++, n--)
			cons->out[p++ % CONS_OUT_SIZE] = *s++;
		barrier();
		cons->out_prod = p;
		evtchn_notify(cons_port);
	}
}

/* Give xenconsoled a chance to copy out everything before the domain dies. */
static void cons_flush(uint64_t timeout)
{
	uint64_t deadline = now_ns() + timeout;

	while (cons && !cons_stuck) {
		evtchn_clear(cons_port);
		mb();
		if (cons->out_cons == cons->out_prod || now_ns() >= deadline)
			break;
		evtchn_notify(cons_port);
		wait_port(cons_port, deadline);
	}
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = ndx_vfmt(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	cons_put(buf, n);
}

/* Copy a value from outside for printing: printable ASCII only. */
static void clean_copy(char *dst, size_t cap, const char *src, size_t len)
{
	size_t i;

	if (len > cap - 1)
		len = cap - 1;
	for (i = 0; i < len; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	dst[len] = '\0';
}

static __attribute__((noreturn)) void power_down(unsigned reason)
{
	cons_flush(2 * SEC);
	hard_stop(reason);
}

/* ---- XenStore client ------------------------------------------------------ */

static uint32_t xs_next_req = 1;
static char xs_msg[XS_PAYLOAD_MAX + 1];

static void xs_put(const void *data, size_t n)
{
	const char *d = data;

	while (n) {
		uint32_t c, p, used;

		evtchn_clear(xs_port);
		c = xs->req_cons;
		p = xs->req_prod;
		mb();
		used = p - c;
		if (used >= XS_RING_SIZE) {
			wait_port(xs_port, 0);
			continue;
		}
		for (; used < XS_RING_SIZE && n; used++, n--)
			xs->req[p++ % XS_RING_SIZE] = *d++;
		barrier();
		xs->req_prod = p;
		evtchn_notify(xs_port);
	}
}

static void xs_get(void *buf, size_t n)
{
	char *d = buf;

	while (n) {
		uint32_t c, p;

		evtchn_clear(xs_port);
		c = xs->rsp_cons;
		p = xs->rsp_prod;
		mb();
		if (c == p) {
			wait_port(xs_port, 0);
			continue;
		}
		for (; c != p && n; n--)
			*d++ = xs->rsp[c++ % XS_RING_SIZE];
		mb();
		xs->rsp_cons = c;
		evtchn_notify(xs_port);
	}
}

static int xs_has_data(void)
{
	mb();
	return xs->rsp_cons != xs->rsp_prod;
}

static void xs_note_watch(uint32_t len)
{
	size_t plen = 0;
	const char *token;

	while (plen < len && xs_msg[plen])
		plen++;
	if (plen + 1 >= len)
		return;
	token = xs_msg + plen + 1;
	if (ndx_streq(token, TOKEN_SHUTDOWN))
		ev_shutdown = 1;
	else if (ndx_streq(token, TOKEN_CLICKOS))
		ev_clickos = 1;
}

/* Read one message into xs_msg (NUL-terminated); watch events are noted. */
static struct xs_hdr xs_recv(void)
{
	struct xs_hdr h;
	uint32_t keep;

	xs_get(&h, sizeof(h));
	keep = h.len < XS_PAYLOAD_MAX ? h.len : XS_PAYLOAD_MAX;
	xs_get(xs_msg, keep);
	xs_msg[keep] = '\0';
	for (uint32_t rest = h.len - keep; rest; rest--) {
		char junk;

		xs_get(&junk, 1);
	}
	h.len = keep;
	if (h.type == XSM_WATCH_EVENT)
		xs_note_watch(h.len);
	return h;
}

/* Queue one request (payload = a then b); returns its id. Several requests
 * may be outstanding: xenstored answers them in order. */
static uint32_t xs_send(uint32_t type, const char *a, size_t alen,
			const char *b, size_t blen)
{
	struct xs_hdr h = { type, xs_next_req++, 0, (uint32_t)(alen + blen) };

	xs_put(&h, sizeof(h));
	xs_put(a, alen);
	if (blen)
		xs_put(b, blen);
	return h.req_id;
}

/* Wait for the reply to request id (earlier replies are dropped). Returns
 * the reply length (reply in xs_msg) or ERR_NOENT / ERR_OTHER. */
static int xs_reply(uint32_t id)
{
	for (;;) {
		struct xs_hdr r = xs_recv();

		if (r.type == XSM_WATCH_EVENT || r.req_id != id)
			continue;
		if (r.type == XSM_ERROR)
			return ndx_streq(xs_msg, "ENOENT") ? ERR_NOENT : ERR_OTHER;
		return (int)r.len;
	}
}

static uint32_t xs_send_read(const char *path)
{
	return xs_send(XSM_READ, path, ndx_strlen(path) + 1, 0, 0);
}

static uint32_t xs_send_write(const char *path, const char *value)
{
	return xs_send(XSM_WRITE, path, ndx_strlen(path) + 1, value,
		       ndx_strlen(value));
}

static uint32_t xs_send_watch(const char *path, const char *token)
{
	return xs_send(XSM_WATCH, path, ndx_strlen(path) + 1, token,
		       ndx_strlen(token) + 1);
}

static int xs_read(const char *path)
{
	return xs_reply(xs_send_read(path));
}

static int xs_write(const char *path, const char *value)
{
	return xs_reply(xs_send_write(path, value));
}

/* ---- behaviours ------------------------------------------------------------ */

static void handle_shutdown_request(void)
{
	static char last_ignored[32];
	char v[32];
	int n = xs_read("control/shutdown");

	if (n <= 0)
		return; /* absent, or our own acknowledgement */
	clean_copy(v, sizeof(v), xs_msg, (size_t)n);

	if (opts.ignore_shutdown) {
		if (!ndx_streq(v, last_ignored))
			say("NDX-GUEST ignoring shutdown request '%s'\n", v);
		clean_copy(last_ignored, sizeof(last_ignored), v, ndx_strlen(v));
		return;
	}
	if (ndx_streq(v, "poweroff") || ndx_streq(v, "halt") ||
	    ndx_streq(v, "reboot")) {
		say("NDX-GUEST shutdown requested\n");
		say("control/shutdown was '%s'\n", v);
		xs_write("control/shutdown", "");
		if (ndx_streq(v, "reboot")) {
			say("NDX-GUEST reboot\n");
			power_down(REASON_reboot);
		}
		say("NDX-GUEST poweroff\n");
		power_down(REASON_poweroff);
	}
	if (!ndx_streq(v, last_ignored))
		say("NDX-GUEST unsupported shutdown request '%s' ignored\n", v);
	clean_copy(last_ignored, sizeof(last_ignored), v, ndx_strlen(v));
}

static void handle_clickos_status(void)
{
	static char last[32];
	static uint32_t last_crc;
	static uint64_t last_len;
	char st[32], path[48], name[128];
	uint64_t total = 0;
	uint32_t crc = 0;
	unsigned idx;
	int n = xs_read("clickos/0/status");

	if (n < 0)
		return;
	clean_copy(st, sizeof(st), xs_msg, (size_t)n);

	if (!ndx_streq(st, "Running")) {
		if (!ndx_streq(st, last))
			say("CLICKOS router=0 status=%s\n", st);
		clean_copy(last, sizeof(last), st, ndx_strlen(st));
		return;
	}
	for (idx = 0;; idx++) {
		ndx_fmt(path, sizeof(path), "clickos/0/config/%u", idx);
		n = xs_read(path);
		if (n < 0)
			break;
		crc = ndx_crc32(crc, xs_msg, (size_t)n);
		total += (uint64_t)n;
	}
	/* The same configuration reported twice (e.g. the initial watch event
	 * racing with the host's write) is printed once. */
	if (ndx_streq(last, "Running") && last_crc == crc && last_len == total)
		return;
	n = xs_read("clickos/0/config_name");
	clean_copy(name, sizeof(name), n > 0 ? xs_msg : "", n > 0 ? (size_t)n : 0);
	say("CLICKOS router=0 config_name=%s chunks=%u\n", name, idx);
	say("CLICKOS router=0 status=Running config_len=%lu config_crc32=%08x\n",
	    (unsigned long)total, crc);
	clean_copy(last, sizeof(last), st, ndx_strlen(st));
	last_crc = crc;
	last_len = total;
}

static void print_unknown(void *ctx, const char *w, size_t len)
{
	char buf[80];

	(void)ctx;
	clean_copy(buf, sizeof(buf), w, len);
	say("NDX-GUEST ignoring unknown argument '%s'\n", buf);
}

static uint64_t earliest(uint64_t a, uint64_t b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	return a < b ? a : b;
}

void ndx_main(const struct start_info *si)
{
	char domid[16] = "?", cmdline[sizeof(si->cmd_line)];
	uint64_t t_boot, t_ready, poweroff_at = 0, crash_at = 0, next_tick = 0;
	uint32_t id_domid, id_feature, id_watch_sd, id_clickos, id_watch_ck;
	unsigned long ticks = 0;
	int n;

	/* The shared info page holds the event bits and the clock. */
	if (map_frame(map_slots[0], si->shared_info))
		hard_stop(REASON_crash);
	shinfo = (volatile struct shared_info *)map_slots[0];
	shinfo->vcpu[0].upcall_mask = 1;
	t_boot = now_ns();

	if (si->console_mfn &&
	    map_frame(map_slots[1], si->console_mfn * PAGE_SIZE) == 0) {
		cons = (volatile struct cons_ring *)map_slots[1];
		cons_port = si->console_evtchn;
	}
	if (map_frame(map_slots[2], si->store_mfn * PAGE_SIZE)) {
		say("ndx-unikernel: cannot map the XenStore ring\n");
		power_down(REASON_crash);
	}
	xs = (volatile struct xs_ring *)map_slots[2];
	xs_port = si->store_evtchn;

	/* All boot-time XenStore requests go out at once: one round trip to
	 * xenstored instead of five. The clickos/0/status watch is always
	 * set; its events are ignored unless ClickOS mode is on. */
	id_domid = xs_send_read("domid");
	/* libxl creates control/feature-* writable by the guest. */
	id_feature = xs_send_write("control/feature-poweroff", "1");
	id_watch_sd = xs_send_watch("control/shutdown", TOKEN_SHUTDOWN);
	id_clickos = xs_send_read("clickos/0");
	id_watch_ck = xs_send_watch("clickos/0/status", TOKEN_CLICKOS);

	n = xs_reply(id_domid);
	if (n > 0)
		clean_copy(domid, sizeof(domid), xs_msg, (size_t)n);
	say("ndx-unikernel %s booting domid=%s\n", NDX_VERSION, domid);

	for (n = 0; n < (int)sizeof(cmdline) - 1 && si->cmd_line[n]; n++)
		;
	clean_copy(cmdline, sizeof(cmdline), si->cmd_line, (size_t)n);
	say("cmdline: %s\n", cmdline);
	ndx_parse_cmdline(cmdline, &opts, print_unknown, 0);

	xs_reply(id_feature);
	if (xs_reply(id_watch_sd) < 0)
		say("NDX-GUEST warning: cannot watch control/shutdown\n");
	if (opts.ignore_shutdown)
		say("NDX-GUEST ignore_shutdown: shutdown requests will be ignored\n");
	if (opts.burn_pct)
		say("NDX-GUEST burning %u%% of a CPU\n", opts.burn_pct);
	if (xs_reply(id_clickos) >= 0 && !opts.clickos) {
		opts.clickos = 1;
		say("clickos/0 present: ClickOS mode\n");
	}
	if (xs_reply(id_watch_ck) < 0 && opts.clickos)
		say("NDX-GUEST warning: cannot watch clickos/0/status\n");

	t_ready = now_ns();
	say("NDX-GUEST READY\n");
	say("init took %lu us\n", (unsigned long)((t_ready - t_boot) / 1000));

	if (opts.poweroff_after_ns)
		poweroff_at = t_ready + opts.poweroff_after_ns;
	if (opts.crash_after_ns)
		crash_at = t_ready + opts.crash_after_ns;
	if (opts.tick_ns)
		next_tick = t_ready + opts.tick_ns;

	for (;;) {
		uint64_t now, deadline;

		while (ev_shutdown || ev_clickos) {
			if (ev_shutdown) {
				ev_shutdown = 0;
				handle_shutdown_request();
			}
			if (ev_clickos) {
				ev_clickos = 0;
				if (opts.clickos)
					handle_clickos_status();
			}
		}

		now = now_ns();
		if (crash_at && now >= crash_at &&
		    (!poweroff_at || crash_at <= poweroff_at)) {
			say("NDX-GUEST crash\n");
			power_down(REASON_crash);
		}
		if (poweroff_at && now >= poweroff_at) {
			say("NDX-GUEST poweroff\n");
			power_down(REASON_poweroff);
		}
		if (next_tick && now >= next_tick) {
			say("tick %lu\n", ++ticks);
			next_tick += opts.tick_ns;
			if (next_tick <= now)
				next_tick = now + opts.tick_ns;
		}

		evtchn_clear(xs_port);
		if (xs_has_data()) {
			xs_recv(); /* only watch events are expected here */
			continue;
		}
		deadline = earliest(earliest(poweroff_at, crash_at), next_tick);
		if (opts.burn_pct) {
			/* Busy part of the period: go round the loop again, so
			 * XenStore events (shutdown requests, ClickOS) and timers
			 * are still served while the CPU burns. */
			uint64_t t = now_ns(), into = (t - t_ready) % BURN_PERIOD;

			if (into < BURN_PERIOD / 100 * opts.burn_pct) {
				cpu_relax();
				continue;
			}
			deadline = earliest(deadline, t - into + BURN_PERIOD);
		}
		if (deadline && deadline <= now_ns())
			continue;
		wait_port(xs_port, deadline);
	}
}
