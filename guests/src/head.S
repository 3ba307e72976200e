/*
 * Entry point, Xen ELF notes and hypercall page of the ndx unikernel.
 *
 * Xen starts a 64-bit PV guest in long mode at the ENTRY note address with
 * %rsi = virtual address of start_info, on page tables that map the whole
 * image (VIRT_BASE 0, so virtual == pseudo-physical here).
 */
#include "xen_abi.h"

/* One note: name "Xen", the given type, descriptor emitted by the caller
 * between the macro and NOTE_END. */
.macro NOTE type
	.balign 4
	.long 4
	.long 2f - 1f
	.long \type
	.asciz "Xen"
1:
.endm
.macro NOTE_END
2:	.balign 4
.endm

	.section .note.Xen, "a", @note
	NOTE XNOTE_GUEST_OS
	.asciz "ndx-unikernel"
	NOTE_END
	NOTE XNOTE_GUEST_VERSION
	.asciz NDX_VERSION_STR
	NOTE_END
	NOTE XNOTE_XEN_VERSION
	.asciz "xen-3.0"
	NOTE_END
	NOTE XNOTE_LOADER
	.asciz "generic"
	NOTE_END
	NOTE XNOTE_VIRT_BASE
	.quad 0
	NOTE_END
	NOTE XNOTE_PADDR_OFFSET
	.quad 0
	NOTE_END
	NOTE XNOTE_ENTRY
	.quad _start
	NOTE_END
	NOTE XNOTE_HYPERCALL_PAGE
	.quad hypercall_page
	NOTE_END

	.section .text.head, "ax", @progbits
	.code64
	.globl _start
_start:
	cld
	movq %rsi, %r12                 /* keep start_info */
	leaq __bss_start(%rip), %rdi    /* zero .bss (loader does too; be sure) */
	leaq __bss_end(%rip), %rcx
	subq %rdi, %rcx
	xorl %eax, %eax
	rep stosb
	leaq boot_stack_top(%rip), %rsp
	xorl %ebp, %ebp
	movq %r12, %rdi
	call ndx_main
	ud2                             /* not reached; a fault crashes the domain */

/*
 * long hypercall(long nr, long a1, long a2, long a3, long a4)
 * Xen's 64-bit PV convention: arguments in rdi, rsi, rdx, r10, r8; result in
 * rax. Each hypercall page slot returns to our caller by itself.
 */
	.globl hypercall
hypercall:
	movq %rdi, %rax
	shlq $5, %rax
	leaq hypercall_page(%rip), %r11
	addq %r11, %rax
	movq %rsi, %rdi
	movq %rdx, %rsi
	movq %rcx, %rdx
	movq %r8, %r10
	jmp *%rax

	.section .text.hcpage, "ax", @progbits
	.balign 4096
	.globl hypercall_page
hypercall_page:
	.skip 4096, 0xcc                /* filled in by Xen at domain build */

	.section .bss.stack, "aw", @nobits
	.balign 16
	.skip 16384
boot_stack_top:
