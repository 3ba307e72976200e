/*
 * The handful of Xen interface facts this guest relies on (x86_64 PV,
 * Xen 3.0+ ABI; checked against Xen 4.17). Written for this project: only
 * the numbers and layouts that are used are described here.
 */
#ifndef NDX_XEN_ABI_H
#define NDX_XEN_ABI_H

/* ---- ELF note types (name "Xen") ---------------------------------------- */
#define XNOTE_ENTRY          1
#define XNOTE_HYPERCALL_PAGE 2
#define XNOTE_VIRT_BASE      3
#define XNOTE_PADDR_OFFSET   4
#define XNOTE_XEN_VERSION    5
#define XNOTE_GUEST_OS       6
#define XNOTE_GUEST_VERSION  7
#define XNOTE_LOADER         8

#ifndef __ASSEMBLER__
#include <stdint.h>

/* ---- hypercall numbers (index into the hypercall page, 32 bytes each) --- */
#define HC_update_va_mapping   14
#define HC_console_io          18
#define HC_sched_op            29
#define HC_event_channel_op    32

/* sched_op sub-commands and shutdown reasons */
#define SCHED_shutdown  2 /* arg: struct sched_shutdown * */
#define SCHED_poll      3 /* arg: struct sched_poll * */

#define REASON_poweroff 0
#define REASON_reboot   1
#define REASON_crash    3

struct sched_shutdown {
	uint32_t reason;
};

struct sched_poll {
	uint32_t *ports;    /* guest handle: array of event channel ports */
	uint32_t nr_ports;
	uint32_t _pad;
	uint64_t timeout;   /* absolute Xen system time in ns, 0 = none */
};

/* event_channel_op sub-commands */
#define EVTCHN_send 4

struct evtchn_send_arg {
	uint32_t port;
};

/* console_io sub-commands (usable by domU only in debug hypervisors) */
#define CONSIO_write 0

/* update_va_mapping flags */
#define UVM_INVLPG 2

/* page table entry bits */
#define PTE_PRESENT  0x001ULL
#define PTE_RW       0x002ULL
#define PTE_USER     0x004ULL
#define PTE_ACCESSED 0x020ULL
#define PTE_DIRTY    0x040ULL

/* ---- start_info, as handed over in %rsi at the entry point -------------- */
struct start_info {
	char magic[32];          /* "xen-3.0-x86_64" */
	uint64_t nr_pages;
	uint64_t shared_info;    /* machine address of the shared info page */
	uint32_t flags;
	uint32_t _pad0;
	uint64_t store_mfn;      /* xenstore ring frame */
	uint32_t store_evtchn;
	uint32_t _pad1;
	uint64_t console_mfn;    /* (domU view of the console union) */
	uint32_t console_evtchn;
	uint32_t _pad2;
	uint64_t pt_base;
	uint64_t nr_pt_frames;
	uint64_t mfn_list;
	uint64_t mod_start;
	uint64_t mod_len;
	char cmd_line[1024];
	uint64_t first_p2m_pfn;
	uint64_t nr_p2m_frames;
};

_Static_assert(__builtin_offsetof(struct start_info, store_mfn) == 56, "si");
_Static_assert(__builtin_offsetof(struct start_info, console_mfn) == 72, "si");
_Static_assert(__builtin_offsetof(struct start_info, cmd_line) == 128, "si");

/* ---- shared info page -------------------------------------------------- */
struct vcpu_time {
	uint32_t version;        /* odd while Xen updates the record */
	uint32_t _pad0;
	uint64_t tsc_timestamp;  /* TSC at the time system_time was taken */
	uint64_t system_time;    /* ns since boot of the host */
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t _pad1[2];
};

struct vcpu_info {
	uint8_t upcall_pending;
	uint8_t upcall_mask;
	uint8_t _pad0[6];
	uint64_t pending_sel;
	uint64_t cr2;
	uint64_t _pad1;
	struct vcpu_time time;
};

struct shared_info {
	struct vcpu_info vcpu[32];
	uint64_t evtchn_pending[64];
	uint64_t evtchn_mask[64];
	/* wallclock and arch fields follow; unused */
};

_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info");
_Static_assert(__builtin_offsetof(struct shared_info, evtchn_pending) == 2048, "sh");

/* ---- PV console ring --------------------------------------------------- */
#define CONS_IN_SIZE  1024
#define CONS_OUT_SIZE 2048

struct cons_ring {
	char in[CONS_IN_SIZE];
	char out[CONS_OUT_SIZE];
	uint32_t in_cons, in_prod;
	uint32_t out_cons, out_prod;
};

/* ---- XenStore ring and wire format ------------------------------------- */
#define XS_RING_SIZE    1024
#define XS_PAYLOAD_MAX  4096

struct xs_ring {
	char req[XS_RING_SIZE];
	char rsp[XS_RING_SIZE];
	uint32_t req_cons, req_prod;
	uint32_t rsp_cons, rsp_prod;
};

struct xs_hdr {
	uint32_t type;
	uint32_t req_id;
	uint32_t tx_id;
	uint32_t len;
};

enum {
	XSM_READ = 2,
	XSM_WATCH = 4,
	XSM_WRITE = 11,
	XSM_WATCH_EVENT = 15,
	XSM_ERROR = 16,
};

#endif /* !__ASSEMBLER__ */
#endif
