// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * l2vmm.c - a tiny VMM on raw /dev/kvm ioctls, used by drgn-kvmwalk's VM
 * tests.  It runs inside a (nested) KVM host, creates one guest with two
 * vCPUs and its own 4-level page tables, lets the guest write a distinct tag
 * into a set of pages through the guest's page tables, verifies the tags from
 * the host side, records ground truth (GVA -> GPA -> HVA -> host PFN) as JSON
 * and then keeps the VM alive (vCPUs halted) until told to stop, so that
 * drgn-kvmwalk can walk KVM's shadow / TDP page tables for this process.
 *
 * Build: gcc -O2 -Wall -Wextra -o l2vmm l2vmm.c -lpthread
 * See l2vmm-notes.md for the memory layout, tag scheme, JSON schema, options
 * and exit codes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Exit codes                                                          */
/* ------------------------------------------------------------------ */
#define EXIT_OK       0 /* stopped by SIGTERM/SIGINT/stop file after READY */
#define EXIT_ERR      1 /* any runtime failure (ioctl, bad exit, bad tag...) */
#define EXIT_USAGE    2 /* bad command line */
#define EXIT_TIMEOUT  3 /* --timeout expired */

/* ------------------------------------------------------------------ */
/* Fixed layout                                                        */
/* ------------------------------------------------------------------ */
#define PAGE_SIZE         0x1000ULL
#define PAGE_SHIFT        12
#define MIB               (1024ULL * 1024ULL)

#define NR_VCPUS          2

/* slot 0: GPA 0, 2 MiB: code, stacks, tag tables, slot-0 tagged pages, PTs */
#define SLOT0_GPA         0x0ULL
#define SLOT0_SIZE        (2 * MIB)
#define CODE_GPA          0x1000ULL
#define STACK_GPA(v)      (0x10000ULL + (uint64_t)(v) * 0x4000ULL) /* 16K each */
#define STACK_SIZE        0x4000ULL
#define TAGTAB_GPA(v)     (0x20000ULL + (uint64_t)(v) * 0x4000ULL) /* 16K each */
#define TAGTAB_SIZE       0x4000ULL
#define LOWTAG_GPA(v, j)  (0x80000ULL + (uint64_t)(v) * 0x10000ULL + (uint64_t)(j) * PAGE_SIZE)
#define LOWTAGS_PER_VCPU  4
#define PTPOOL_GPA        0x100000ULL /* guest page-table pages, bump-allocated */
#define PTPOOL_END        0x200000ULL

/* a made-up Linux kernel layout in slot 0, for drgn_kvmwalk.gprog's
 * linux=True: a VMCOREINFO ELF note and 4-level kernel page tables
 * (swapper_pg_dir) that map two kernel addresses to tagged pages */
#define FAKE_NOTE_GPA     0x40000ULL
#define FAKE_PGD_GPA      0x41000ULL
#define FAKE_PUD_GPA      0x42000ULL
#define FAKE_PMD_GPA      0x43000ULL
#define FAKE_PT_GPA       0x44000ULL
#define START_KERNEL_MAP  0xffffffff80000000ULL /* __START_KERNEL_map */
#define FAKE_KVA_4K       0xffffffff81000000ULL
#define FAKE_KVA_2M       0xffffffff81200000ULL
#define FAKE_OSRELEASE    "l2vmm-made-up-linux"

/* slot 1: GPA 1 GiB, 4 MiB (anon) or 1 GiB (hugetlb1g): data pages */
#define SLOT1_GPA         0x40000000ULL
#define SLOT1_SIZE        (4 * MIB)
#define SLOT1_PAGES       (SLOT1_SIZE / PAGE_SIZE) /* scramble domain (1024) */
#define SLOT1_SIZE_1G     (1024 * MIB)
#define HUGE_2M           (2 * MIB)
/* --prefault-mib: slot 2, for benchmarks: anon 4K pages at 4 GiB, written by
 * the VMM and then mapped into KVM's TDP tables with KVM_PRE_FAULT_MEMORY */
#define SLOT2_GPA         0x100000000ULL
/* --host-changes: slot 3 (moved from SLOT3_GPA to SLOT3_NEW_GPA) and slot 4
 * (deleted), each with tagged pages of the last vCPU */
#define SLOT3_GPA         0x80000000ULL
#define SLOT3_NEW_GPA     0xc0000000ULL
#define SLOT4_GPA         0x90000000ULL
#define HC_SLOT_SIZE      (64 * 1024ULL)
#define HC_SLOT3_PAGES    2
#define HC_SLOT4_PAGES    1
#define HUGE_1G           (1024 * MIB)

/* data GVAs, 64-bit mode */
#define DATA_GVA_BASE     0x00007f0000000000ULL
#define DATA_GVA_STRIDE   0x100000ULL /* per vCPU -> at most 256 pages each */
#define DATA_GVA(v, i)    (DATA_GVA_BASE + (uint64_t)(v) * DATA_GVA_STRIDE + (uint64_t)(i) * PAGE_SIZE)
#define MAX_PAGES_PER_VCPU ((int)(DATA_GVA_STRIDE / PAGE_SIZE))
/* data GVAs, 32-bit modes (pae, 32): even i in the 4th GiB, odd i in the 3rd */
#define DATA32_GVA_HI     0xc0000000ULL
#define DATA32_GVA_LO     0x80000000ULL
#define DATA32_GVA(v, i)  ((((i) & 1) ? DATA32_GVA_LO : DATA32_GVA_HI) + \
			   (uint64_t)(v) * DATA_GVA_STRIDE + (uint64_t)(i) * PAGE_SIZE)
/* --guest-2m: one 2 MiB-aligned GVA block per vCPU */
#define DATA_GVA_2M(v)    (DATA_GVA_BASE + (uint64_t)(v) * HUGE_2M)
#define DATA32_GVA_2M(v)  ((v) == 0 ? DATA32_GVA_HI : DATA32_GVA_LO + HUGE_2M)

/* tag scheme */
#define TAG_MAGIC         0x4b564d5700000000ULL /* "KVMW" in the top 32 bits */
#define MAKE_TAG(v, idx, slot) \
	(TAG_MAGIC | ((uint64_t)(v) << 24) | ((uint64_t)(idx) << 4) | (uint64_t)(slot))

/* scrambled slot-1 page number for (vcpu, i): bijection on 0..1023 */
#define SCRAMBLE_MUL      397ULL /* odd -> bijective modulo 2^10 */
#define SCRAMBLE_ADD      123ULL

/* x86 bits */
#define CR0_PE  (1ULL << 0)
#define CR0_MP  (1ULL << 1)
#define CR0_ET  (1ULL << 4)
#define CR0_NE  (1ULL << 5)
#define CR0_WP  (1ULL << 16)
#define CR0_AM  (1ULL << 18)
#define CR0_PG  (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)
#define PTE_P   (1ULL << 0)
#define PTE_RW  (1ULL << 1)
#define PTE_PS  (1ULL << 7)
#define PTE_ADDR_MASK 0x000ffffffffff000ULL
#define PDE_2M_ADDR_MASK 0x000fffffffe00000ULL
#define PTE32_ADDR_MASK 0xfffff000U

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << MAP_HUGE_SHIFT)
#endif

/* /proc/kpageflags bits */
#define KPF_HUGE 17
#define KPF_THP  22

/* ------------------------------------------------------------------ */
/* Guest code                                                          */
/* ------------------------------------------------------------------ */
/*
 * Loaded at CODE_GPA (identity mapped).  Inputs: RSI = GVA of the tag table
 * (array of {u64 gva; u64 tag;}), RCX = number of entries, RDI = 0, or the
 * CR3 to switch to after a first pass over the table (--switch-cr3): the
 * guest then loads it and writes every tag again under the new CR3.  An
 * entry whose gva has bit 0 set is read, not written (--host-changes: a
 * page the host made read-only).
 *
 *  0: 49 89 f0              mov  %rsi,%r8         ; keep the table
 *  3: 49 89 c9              mov  %rcx,%r9
 *  6: 48 85 c9        loop: test %rcx,%rcx
 *  9: 74 1f                 jz   check           (-> 0x2a)
 *  b: 48 8b 06              mov  (%rsi),%rax      ; gva
 *  e: 48 8b 56 08           mov  0x8(%rsi),%rdx   ; tag
 * 12: 48 0f ba f0 00        btr  $0,%rax          ; bit 0: read only
 * 17: 72 05                 jc   read            (-> 0x1e)
 * 19: 48 89 10              mov  %rdx,(%rax)      ; *gva = tag
 * 1c: eb 03                 jmp  next            (-> 0x21)
 * 1e: 48 8b 10        read: mov  (%rax),%rdx      ; a load through the tables
 * 21: 48 83 c6 10     next: add  $0x10,%rsi
 * 25: 48 ff c9              dec  %rcx
 * 28: eb dc                 jmp  loop            (-> 6)
 * 2a: 48 85 ff       check: test %rdi,%rdi
 * 2d: 74 0d                 jz   done            (-> 0x3c)
 * 2f: 0f 22 df              mov  %rdi,%cr3
 * 32: 31 ff                 xor  %edi,%edi
 * 34: 4c 89 c6              mov  %r8,%rsi
 * 37: 4c 89 c9              mov  %r9,%rcx
 * 3a: eb ca                 jmp  loop            (-> 6)
 * 3c: f4              done: hlt
 * 3d: eb fd                 jmp  done            (-> 0x3c)
 *
 * (Assembled with GNU as --64 and read back with objdump -d.)
 */
static const uint8_t guest_code[] = {
	0x49, 0x89, 0xf0,
	0x49, 0x89, 0xc9,
	0x48, 0x85, 0xc9,
	0x74, 0x1f,
	0x48, 0x8b, 0x06,
	0x48, 0x8b, 0x56, 0x08,
	0x48, 0x0f, 0xba, 0xf0, 0x00,
	0x72, 0x05,
	0x48, 0x89, 0x10,
	0xeb, 0x03,
	0x48, 0x8b, 0x10,
	0x48, 0x83, 0xc6, 0x10,
	0x48, 0xff, 0xc9,
	0xeb, 0xdc,
	0x48, 0x85, 0xff,
	0x74, 0x0d,
	0x0f, 0x22, 0xdf,
	0x31, 0xff,
	0x4c, 0x89, 0xc6,
	0x4c, 0x89, 0xc9,
	0xeb, 0xca,
	0xf4,
	0xeb, 0xfd,
};

/*
 * 32-bit protected-mode variant (for --guest-paging pae and 32), same inputs
 * (ESI, ECX) and the same table layout; the 64-bit tag is stored as two
 * 32-bit halves (low half first).  Only the low 32 bits of each gva are used.
 *
 *  0: 85 c9           loop: test %ecx,%ecx
 *  2: 74 13                 je   done            (-> 0x17)
 *  4: 8b 06                 mov  (%esi),%eax      ; gva
 *  6: 8b 56 08              mov  0x8(%esi),%edx   ; tag low half
 *  9: 89 10                 mov  %edx,(%eax)
 *  b: 8b 56 0c              mov  0xc(%esi),%edx   ; tag high half
 *  e: 89 50 04              mov  %edx,0x4(%eax)
 * 11: 83 c6 10              add  $0x10,%esi
 * 14: 49                    dec  %ecx
 * 15: eb e9                 jmp  loop            (-> 0)
 * 17: f4              done: hlt
 * 18: eb fd                 jmp  done            (-> 0x17)
 */
static const uint8_t guest_code32[] = {
	0x85, 0xc9,
	0x74, 0x13,
	0x8b, 0x06,
	0x8b, 0x56, 0x08,
	0x89, 0x10,
	0x8b, 0x56, 0x0c,
	0x89, 0x50, 0x04,
	0x83, 0xc6, 0x10,
	0x49,
	0xeb, 0xe9,
	0xf4,
	0xeb, 0xfd,
};

/* ------------------------------------------------------------------ */
/* Data structures                                                     */
/* ------------------------------------------------------------------ */
struct memslot {
	int slot;
	int as_id;
	uint64_t gpa;
	uint64_t size;
	uint8_t *hva;      /* aligned HVA handed to KVM */
	void *map_base;    /* what mmap returned (for bookkeeping) */
	size_t map_len;
	uint32_t flags;    /* KVM_MEM_* flags */
	const char *backing;
	bool thp;
	bool bench;        /* --prefault-mib slot: not in host_runs */
	bool deleted;      /* --host-changes deleted it (KVM has it no more) */
};

/*
 * What --host-changes did to a tagged page after the guest wrote its tag
 * (truth "host_changes"; see l2vmm-notes.md).
 */
enum host_change {
	HC_NONE,
	HC_DONTNEED,      /* madvise(MADV_DONTNEED) after the last run */
	HC_READONLY,      /* mprotect(PROT_READ) after the last run */
	HC_READONLY_READ, /* mprotect(PROT_READ) before the second run, which reads it */
	HC_MOVED,         /* its memslot moved to another GPA before the second run */
	HC_DELETED,       /* its memslot deleted before the second run */
};

static const char *const host_change_names[] = {
	[HC_NONE] = "none",
	[HC_DONTNEED] = "madv_dontneed",
	[HC_READONLY] = "mprotect_readonly",
	[HC_READONLY_READ] = "mprotect_readonly_read",
	[HC_MOVED] = "memslot_moved",
	[HC_DELETED] = "memslot_deleted",
};

struct tagged_page {
	int vcpu;
	int index;         /* per-vCPU index used in the tag */
	int slot;
	uint64_t gva;
	uint64_t gpa;
	uint64_t hva;
	uint64_t tag;
	uint64_t pfn;
	int host_thp;      /* -1 unknown, 0/1 from /proc/kpageflags */
	enum host_change change;
	uint64_t new_gpa;  /* HC_MOVED: its GPA after the move */
	bool host_present; /* pagemap has it at the end */
};

/* a run of contiguous translations: [from, from + len) -> [to, to + len) */
struct xrun {
	uint64_t from;
	uint64_t to;
	uint64_t len;
};

#define MAX_XRUNS 4096

struct vm;

/*
 * Guest paging mode: "64" (4-level long mode), "pae" (32-bit protected mode,
 * PAE paging) and "32" (32-bit protected mode, 2-level paging).  New modes
 * (e.g. LA57) would add an entry to paging_modes[].
 */
struct paging_mode {
	const char *name;
	void (*init)(struct vm *vm);                       /* create root table */
	void (*map)(struct vm *vm, uint64_t gva, uint64_t gpa);          /* 4K */
	void (*map_2m)(struct vm *vm, uint64_t gva, uint64_t gpa);       /* NULL: none */
	void (*setup_sregs)(struct vm *vm, struct kvm_sregs *sregs);
	uint64_t (*walk)(struct vm *vm, uint64_t gva);     /* self-check */
	const uint8_t *code;
	size_t code_len;
	bool is32;                                         /* GVAs below 4 GiB */
};

/*
 * Guest memory backing: "anon" (MAP_PRIVATE|MAP_ANONYMOUS, optional THP on
 * slot 1) and "hugetlb1g" (slot 1 is 1 GiB of MAP_HUGETLB|MAP_HUGE_1GB; slot
 * 0 stays anon).  alloc() is called for every slot.
 */
struct backing {
	const char *name;
	void (*alloc)(struct vm *vm, struct memslot *ms, bool allow_thp);
	uint64_t slot1_size;
};

struct vcpu {
	struct vm *vm;
	int id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	uint64_t table_gva;
	uint64_t nr_entries;
	volatile int halted;     /* how many times the guest halted */
	volatile int held;       /* --churn-log: waiting at a halt (churn_hold) */
	/* what the vCPU's own thread saw once the guest halted (truth "state") */
	int tid;
	int cpu;                 /* the CPU the thread is pinned to */
	uint32_t exit_reason;    /* of the last KVM_RUN */
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_mp_state mp_state;
	char *stats;             /* KVM_GET_STATS_FD as a JSON object, or "null" */
};

struct vm {
	int kvm_fd;
	int vm_fd;
	size_t run_size;
	struct memslot slots[5];
	int nr_slots;
	struct vcpu vcpus[NR_VCPUS];
	const struct paging_mode *paging;
	const struct backing *backing;
	char *stats;               /* KVM_GET_STATS_FD of the VM fd, JSON */
	uint64_t cr3;              /* the guest's page tables (its CR3 at the end) */
	uint64_t first_cr3;        /* the CR3 it starts with: cr3, or with
				      --switch-cr3 a copy of its top-level table */
	uint64_t pt_next;          /* next free page in PT pool */
	uint64_t pt_pages[256];
	int nr_pt_pages;
	struct tagged_page *pages;
	int nr_pages;
	struct xrun guest_maps[MAX_XRUNS];  /* GVA -> GPA, as the guest tables map */
	int nr_guest_maps;
	struct xrun host_runs[MAX_XRUNS];   /* GPA -> HPA of present host pages */
	int nr_host_runs;
	uint64_t fake_kva[2], fake_gpa[2], fake_tag[2]; /* plant_linux_layout() */
	volatile int second_run;   /* --host-changes: the vCPUs may run again */
	volatile int churning;     /* --churn-log: the vCPUs run over and over */
	volatile int churn_hold;   /* --churn-log: the vCPUs wait at their next halt */
};

/* options */
static int opt_pages = 64;
static bool opt_thp;
static const char *opt_truth;
static const char *opt_stop_file;
static long opt_timeout = 600;
static bool opt_verbose;
static const char *opt_paging = "64";
static const char *opt_backing = "anon";
static bool opt_guest_2m;
static long opt_prefault_mib;
static bool opt_switch_cr3;
static bool opt_host_changes;
static const char *opt_churn_log;
static bool opt_churn_ksm;
static bool opt_churn_collapse;

static volatile sig_atomic_t stop_signal;
static struct timespec start_ts;

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */
__attribute__((format(printf, 1, 2), noreturn))
static void die(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "l2vmm: error: %s\n", buf);
	fflush(stderr);
	exit(EXIT_ERR);
}

__attribute__((format(printf, 1, 2)))
static void vlog(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (!opt_verbose)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "l2vmm: %s\n", buf); /* one call: no interleaving */
}

/* ioctl wrapper: dies with the ioctl name and errno string on failure */
#define IOCTL(fd, req, arg) do_ioctl((fd), (req), (arg), #req)
static int do_ioctl(int fd, unsigned long req, unsigned long arg, const char *name)
{
	int ret;

	do {
		ret = ioctl(fd, req, arg);
	} while (ret < 0 && errno == EINTR);
	if (ret < 0)
		die("ioctl %s failed: %s (errno %d)", name, strerror(errno), errno);
	return ret;
}
#define IOCTLP(fd, req, ptr) do_ioctl((fd), (req), (unsigned long)(ptr), #req)

static double elapsed(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start_ts.tv_sec) +
	       (double)(now.tv_nsec - start_ts.tv_nsec) / 1e9;
}

static void check_timeout(const char *phase)
{
	if (opt_timeout > 0 && elapsed() >= (double)opt_timeout) {
		fprintf(stderr, "l2vmm: timeout (%ld s) expired %s\n", opt_timeout, phase);
		fflush(stdout);
		fflush(stderr);
		_exit(EXIT_TIMEOUT);
	}
}

static struct memslot *slot_for_gpa(struct vm *vm, uint64_t gpa)
{
	for (int i = 0; i < vm->nr_slots; i++) {
		struct memslot *ms = &vm->slots[i];

		if (!ms->deleted && gpa >= ms->gpa && gpa < ms->gpa + ms->size)
			return ms;
	}
	return NULL;
}

static uint8_t *gpa_to_hva(struct vm *vm, uint64_t gpa)
{
	struct memslot *ms = slot_for_gpa(vm, gpa);

	if (!ms)
		die("internal: GPA 0x%llx not in any memslot", (unsigned long long)gpa);
	return ms->hva + (gpa - ms->gpa);
}

static uint64_t rd64(struct vm *vm, uint64_t gpa)
{
	uint64_t v;

	memcpy(&v, gpa_to_hva(vm, gpa), sizeof(v));
	return v;
}

static void wr64(struct vm *vm, uint64_t gpa, uint64_t v)
{
	memcpy(gpa_to_hva(vm, gpa), &v, sizeof(v));
}

/* ------------------------------------------------------------------ */
/* Backings                                                            */
/* ------------------------------------------------------------------ */
static void backing_anon_alloc(struct vm *vm, struct memslot *ms, bool allow_thp)
{
	/* Over-allocate by 2 MiB and trim so the HVA is 2 MiB aligned. */
	const uint64_t align = 2 * MIB;
	size_t len = ms->size + align;
	uint8_t *p, *aligned;

	(void)vm;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap of %llu bytes for slot %d failed: %s",
		    (unsigned long long)len, ms->slot, strerror(errno));
	aligned = (uint8_t *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
	if (aligned > p && munmap(p, aligned - p) < 0)
		die("munmap (head trim) failed: %s", strerror(errno));
	if (p + len > aligned + ms->size &&
	    munmap(aligned + ms->size, (p + len) - (aligned + ms->size)) < 0)
		die("munmap (tail trim) failed: %s", strerror(errno));

	ms->map_base = aligned;
	ms->map_len = ms->size;
	ms->hva = aligned;
	ms->thp = allow_thp && opt_thp;
	if (madvise(aligned, ms->size, ms->thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) < 0)
		die("madvise(%s) on slot %d failed: %s",
		    ms->thp ? "MADV_HUGEPAGE" : "MADV_NOHUGEPAGE", ms->slot, strerror(errno));
	ms->backing = ms->thp ? "anon-thp" : "anon";
}

/* slot 1: one 1 GiB hugetlb page (HVA 1 GiB aligned); other slots: anon */
static void backing_hugetlb1g_alloc(struct vm *vm, struct memslot *ms, bool allow_thp)
{
	uint8_t *p;

	if (ms->slot != 1) {
		backing_anon_alloc(vm, ms, false);
		return;
	}
	(void)allow_thp;
	if (ms->size != SLOT1_SIZE_1G)
		die("internal: hugetlb1g slot size 0x%llx", (unsigned long long)ms->size);
	p = mmap(NULL, ms->size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB, -1, 0);
	if (p == MAP_FAILED) {
		int e = errno;

		if (e == ENOMEM)
			die("mmap(MAP_HUGETLB|MAP_HUGE_1GB) of 1 GiB for slot %d failed: %s: "
			    "no 1 GiB huge page reserved (boot the host with "
			    "'hugepagesz=1G hugepages=1', or see "
			    "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages)",
			    ms->slot, strerror(e));
		die("mmap(MAP_HUGETLB|MAP_HUGE_1GB) of 1 GiB for slot %d failed: %s (errno %d)",
		    ms->slot, strerror(e), e);
	}
	if ((uintptr_t)p & (HUGE_1G - 1))
		die("internal: hugetlb mapping %p is not 1 GiB aligned", (void *)p);
	ms->map_base = p;
	ms->map_len = ms->size;
	ms->hva = p;
	ms->thp = false;
	ms->backing = "hugetlb1g";
}

static const struct backing backings[] = {
	{ "anon", backing_anon_alloc, SLOT1_SIZE },
	{ "hugetlb1g", backing_hugetlb1g_alloc, SLOT1_SIZE_1G },
};

/* ------------------------------------------------------------------ */
/* Guest paging: 4-level long mode, 4K pages (2M with --guest-2m)      */
/* ------------------------------------------------------------------ */
static uint64_t pt_alloc(struct vm *vm)
{
	uint64_t gpa = vm->pt_next;

	if (gpa >= PTPOOL_END || vm->nr_pt_pages >= (int)(sizeof(vm->pt_pages) / sizeof(vm->pt_pages[0])))
		die("guest page-table pool exhausted");
	vm->pt_next += PAGE_SIZE;
	memset(gpa_to_hva(vm, gpa), 0, PAGE_SIZE);
	vm->pt_pages[vm->nr_pt_pages++] = gpa;
	return gpa;
}

static void pg64_init(struct vm *vm)
{
	vm->cr3 = pt_alloc(vm);
}

static void pg64_map(struct vm *vm, uint64_t gva, uint64_t gpa)
{
	uint64_t table = vm->cr3;

	for (int level = 4; level > 1; level--) {
		int shift = PAGE_SHIFT + 9 * (level - 1);
		uint64_t idx = (gva >> shift) & 511;
		uint64_t pte_gpa = table + idx * 8;
		uint64_t pte = rd64(vm, pte_gpa);

		if (!(pte & PTE_P)) {
			pte = pt_alloc(vm) | PTE_P | PTE_RW;
			wr64(vm, pte_gpa, pte);
		}
		table = pte & PTE_ADDR_MASK;
	}
	wr64(vm, table + ((gva >> PAGE_SHIFT) & 511) * 8,
	     (gpa & PTE_ADDR_MASK) | PTE_P | PTE_RW);
}

/* 2 MiB leaf: PDE with PS=1 (gva, gpa 2 MiB aligned) */
static void pg64_map_2m(struct vm *vm, uint64_t gva, uint64_t gpa)
{
	uint64_t table = vm->cr3;

	if ((gva | gpa) & (HUGE_2M - 1))
		die("internal: unaligned 2M mapping 0x%llx -> 0x%llx",
		    (unsigned long long)gva, (unsigned long long)gpa);
	for (int level = 4; level > 2; level--) {
		int shift = PAGE_SHIFT + 9 * (level - 1);
		uint64_t pte_gpa = table + ((gva >> shift) & 511) * 8;
		uint64_t pte = rd64(vm, pte_gpa);

		if (!(pte & PTE_P)) {
			pte = pt_alloc(vm) | PTE_P | PTE_RW;
			wr64(vm, pte_gpa, pte);
		}
		table = pte & PTE_ADDR_MASK;
	}
	wr64(vm, table + ((gva >> 21) & 511) * 8,
	     (gpa & PDE_2M_ADDR_MASK) | PTE_P | PTE_RW | PTE_PS);
}

static uint64_t pg64_walk(struct vm *vm, uint64_t gva)
{
	uint64_t table = vm->cr3;

	for (int level = 4; level >= 1; level--) {
		int shift = PAGE_SHIFT + 9 * (level - 1);
		uint64_t pte = rd64(vm, table + ((gva >> shift) & 511) * 8);

		if (!(pte & PTE_P))
			return UINT64_MAX;
		if (level == 2 && (pte & PTE_PS))
			return (pte & PDE_2M_ADDR_MASK) | (gva & (HUGE_2M - 1));
		table = pte & PTE_ADDR_MASK;
	}
	return table | (gva & (PAGE_SIZE - 1));
}

/*
 * Flat segments, paging on: long mode (L=1, EFER.LME|LMA) for "64", 32-bit
 * protected mode (D/B=1, EFER 0) for "pae" and "32".  With CR0.PG and
 * CR4.PAE but no LMA, KVM_SET_SREGS loads the PDPTEs from guest memory at
 * CR3; the tables are already written by then.
 */
static void setup_flat_sregs(struct vm *vm, struct kvm_sregs *s, bool long_mode, uint64_t cr4)
{
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = 0x8,
		.type = 11, /* execute/read, accessed */
		.present = 1, .dpl = 0, .db = !long_mode, .s = 1, .l = long_mode, .g = 1,
	};
	struct kvm_segment data = {
		.base = 0, .limit = 0xffffffff, .selector = 0x10,
		.type = 3, /* read/write, accessed */
		.present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
	};
	struct kvm_segment tr = {
		.base = 0, .limit = 0x67, .selector = 0x18,
		.type = 11, /* busy TSS (32- or 64-bit) */
		.present = 1, .dpl = 0, .db = 0, .s = 0, .l = 0, .g = 0,
	};

	s->cs = code;
	s->ds = s->es = s->fs = s->gs = s->ss = data;
	s->tr = tr;
	s->ldt.unusable = 1;
	s->ldt.selector = 0;
	s->ldt.present = 0;
	s->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
	s->cr3 = vm->first_cr3;
	s->cr4 = cr4;
	s->efer = long_mode ? EFER_LME | EFER_LMA : 0;
}

static void pg64_setup_sregs(struct vm *vm, struct kvm_sregs *s)
{
	setup_flat_sregs(vm, s, true, CR4_PAE);
}

/* ------------------------------------------------------------------ */
/* Guest paging: 32-bit protected mode with PAE (3 levels, 8-byte PTEs) */
/* ------------------------------------------------------------------ */
/*
 * CR3 points to a 4-entry PDPT (we give it a whole page, so it is 32-byte
 * aligned).  PDPTEs have only P and the address: RW/US/PS etc. are reserved
 * there and KVM_SET_SREGS (load_pdptrs) would reject them.
 */
static void pgpae_init(struct vm *vm)
{
	vm->cr3 = pt_alloc(vm);
}

static uint64_t pgpae_pd(struct vm *vm, uint64_t gva)
{
	uint64_t pdpte_gpa = vm->cr3 + ((gva >> 30) & 3) * 8;
	uint64_t pdpte = rd64(vm, pdpte_gpa);

	if (gva >> 32)
		die("internal: PAE GVA 0x%llx above 4 GiB", (unsigned long long)gva);
	if (!(pdpte & PTE_P)) {
		pdpte = pt_alloc(vm) | PTE_P;
		wr64(vm, pdpte_gpa, pdpte);
	}
	return pdpte & PTE_ADDR_MASK;
}

static void pgpae_map(struct vm *vm, uint64_t gva, uint64_t gpa)
{
	uint64_t pde_gpa = pgpae_pd(vm, gva) + ((gva >> 21) & 511) * 8;
	uint64_t pde = rd64(vm, pde_gpa);

	if (!(pde & PTE_P)) {
		pde = pt_alloc(vm) | PTE_P | PTE_RW;
		wr64(vm, pde_gpa, pde);
	}
	if (pde & PTE_PS)
		die("internal: 4K mapping of 0x%llx inside a 2M page", (unsigned long long)gva);
	wr64(vm, (pde & PTE_ADDR_MASK) + ((gva >> PAGE_SHIFT) & 511) * 8,
	     (gpa & PTE_ADDR_MASK) | PTE_P | PTE_RW);
}

static void pgpae_map_2m(struct vm *vm, uint64_t gva, uint64_t gpa)
{
	uint64_t pde_gpa;

	if ((gva | gpa) & (HUGE_2M - 1))
		die("internal: unaligned 2M mapping 0x%llx -> 0x%llx",
		    (unsigned long long)gva, (unsigned long long)gpa);
	pde_gpa = pgpae_pd(vm, gva) + ((gva >> 21) & 511) * 8;
	wr64(vm, pde_gpa, (gpa & PDE_2M_ADDR_MASK) | PTE_P | PTE_RW | PTE_PS);
}

static uint64_t pgpae_walk(struct vm *vm, uint64_t gva)
{
	uint64_t pdpte, pde, pte;

	if (gva >> 32)
		return UINT64_MAX;
	pdpte = rd64(vm, vm->cr3 + ((gva >> 30) & 3) * 8);
	if (!(pdpte & PTE_P))
		return UINT64_MAX;
	pde = rd64(vm, (pdpte & PTE_ADDR_MASK) + ((gva >> 21) & 511) * 8);
	if (!(pde & PTE_P))
		return UINT64_MAX;
	if (pde & PTE_PS)
		return (pde & PDE_2M_ADDR_MASK) | (gva & (HUGE_2M - 1));
	pte = rd64(vm, (pde & PTE_ADDR_MASK) + ((gva >> PAGE_SHIFT) & 511) * 8);
	if (!(pte & PTE_P))
		return UINT64_MAX;
	return (pte & PTE_ADDR_MASK) | (gva & (PAGE_SIZE - 1));
}

static void pgpae_setup_sregs(struct vm *vm, struct kvm_sregs *s)
{
	setup_flat_sregs(vm, s, false, CR4_PAE);
}

/* ------------------------------------------------------------------ */
/* Guest paging: 32-bit protected mode, 2-level, 4-byte PTEs, 4K only  */
/* ------------------------------------------------------------------ */
static uint32_t rd32(struct vm *vm, uint64_t gpa)
{
	uint32_t v;

	memcpy(&v, gpa_to_hva(vm, gpa), sizeof(v));
	return v;
}

static void wr32(struct vm *vm, uint64_t gpa, uint32_t v)
{
	memcpy(gpa_to_hva(vm, gpa), &v, sizeof(v));
}

static void pg32_init(struct vm *vm)
{
	vm->cr3 = pt_alloc(vm);
}

static void pg32_map(struct vm *vm, uint64_t gva, uint64_t gpa)
{
	uint64_t pde_gpa = vm->cr3 + ((gva >> 22) & 1023) * 4;
	uint32_t pde;

	if ((gva | gpa) >> 32)
		die("internal: 32-bit mapping 0x%llx -> 0x%llx above 4 GiB",
		    (unsigned long long)gva, (unsigned long long)gpa);
	pde = rd32(vm, pde_gpa);
	if (!(pde & PTE_P)) {
		pde = (uint32_t)pt_alloc(vm) | (uint32_t)(PTE_P | PTE_RW);
		wr32(vm, pde_gpa, pde);
	}
	wr32(vm, (pde & PTE32_ADDR_MASK) + ((gva >> PAGE_SHIFT) & 1023) * 4,
	     ((uint32_t)gpa & PTE32_ADDR_MASK) | (uint32_t)(PTE_P | PTE_RW));
}

static uint64_t pg32_walk(struct vm *vm, uint64_t gva)
{
	uint32_t pde, pte;

	if (gva >> 32)
		return UINT64_MAX;
	pde = rd32(vm, vm->cr3 + ((gva >> 22) & 1023) * 4);
	if (!(pde & PTE_P))
		return UINT64_MAX;
	pte = rd32(vm, (pde & PTE32_ADDR_MASK) + ((gva >> PAGE_SHIFT) & 1023) * 4);
	if (!(pte & PTE_P))
		return UINT64_MAX;
	return (uint64_t)(pte & PTE32_ADDR_MASK) | (gva & (PAGE_SIZE - 1));
}

static void pg32_setup_sregs(struct vm *vm, struct kvm_sregs *s)
{
	setup_flat_sregs(vm, s, false, 0); /* CR4.PSE = 0: 4K pages only */
}

static const struct paging_mode paging_modes[] = {
	{ "64", pg64_init, pg64_map, pg64_map_2m, pg64_setup_sregs, pg64_walk,
	  guest_code, sizeof(guest_code), false },
	{ "pae", pgpae_init, pgpae_map, pgpae_map_2m, pgpae_setup_sregs, pgpae_walk,
	  guest_code32, sizeof(guest_code32), true },
	{ "32", pg32_init, pg32_map, NULL, pg32_setup_sregs, pg32_walk,
	  guest_code32, sizeof(guest_code32), true },
};

/* ------------------------------------------------------------------ */
/* VM setup                                                            */
/* ------------------------------------------------------------------ */
static void add_memslot(struct vm *vm, int slot, uint64_t gpa, uint64_t size, bool allow_thp)
{
	struct memslot *ms = &vm->slots[vm->nr_slots++];
	struct kvm_userspace_memory_region r;

	memset(ms, 0, sizeof(*ms));
	ms->slot = slot;
	ms->as_id = 0;
	ms->gpa = gpa;
	ms->size = size;
	ms->flags = 0;
	vm->backing->alloc(vm, ms, allow_thp);

	memset(&r, 0, sizeof(r));
	r.slot = (uint32_t)ms->as_id << 16 | (uint32_t)slot;
	r.flags = ms->flags;
	r.guest_phys_addr = gpa;
	r.memory_size = size;
	r.userspace_addr = (uintptr_t)ms->hva;
	IOCTLP(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);
	vlog("memslot %d: gpa 0x%llx size 0x%llx hva %p backing %s", slot,
	     (unsigned long long)gpa, (unsigned long long)size, (void *)ms->hva, ms->backing);
}

#ifndef KVM_PRE_FAULT_MEMORY
struct kvm_pre_fault_memory {
	__u64 gpa;
	__u64 size;
	__u64 flags;
	__u64 padding[5];
};
#define KVM_PRE_FAULT_MEMORY _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)
#endif

/* Slot 2 (--prefault-mib): written from here so that every page is a real,
 * distinct host page, then mapped into the TDP tables page by page. */
static void add_prefault_slot(struct vm *vm)
{
	struct memslot *ms = &vm->slots[vm->nr_slots++];
	struct kvm_userspace_memory_region r;
	uint64_t size = (uint64_t)opt_prefault_mib * MIB;

	memset(ms, 0, sizeof(*ms));
	ms->slot = 2;
	ms->gpa = SLOT2_GPA;
	ms->size = size;
	backing_anon_alloc(vm, ms, false);
	ms->bench = true;
	for (uint64_t off = 0; off < size; off += PAGE_SIZE)
		*(volatile uint64_t *)(ms->hva + off) = SLOT2_GPA + off;

	memset(&r, 0, sizeof(r));
	r.slot = 2;
	r.guest_phys_addr = SLOT2_GPA;
	r.memory_size = size;
	r.userspace_addr = (uintptr_t)ms->hva;
	IOCTLP(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);
}

static void prefault_slot(struct vm *vm)
{
	struct kvm_pre_fault_memory range;
	uint64_t size = (uint64_t)opt_prefault_mib * MIB;

	memset(&range, 0, sizeof(range));
	range.gpa = SLOT2_GPA;
	range.size = size;
	while (range.size) {
		/* the kernel advances gpa/size; EINTR/EAGAIN: call again */
		if (ioctl(vm->vcpus[0].fd, KVM_PRE_FAULT_MEMORY, &range) < 0 &&
		    errno != EINTR && errno != EAGAIN)
			die("ioctl(KVM_PRE_FAULT_MEMORY) at gpa 0x%llx failed: %s",
			    (unsigned long long)range.gpa, strerror(errno));
		check_timeout("while pre-faulting slot 2");
	}
	vlog("slot 2: %ld MiB pre-faulted after %.2f s", opt_prefault_mib, elapsed());
}

static void open_kvm(struct vm *vm)
{
	int ver, mmap_size;

	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0)
		die("open /dev/kvm failed: %s", strerror(errno));
	ver = IOCTL(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (ver != KVM_API_VERSION)
		die("KVM_GET_API_VERSION returned %d, expected %d", ver, KVM_API_VERSION);
	if (IOCTL(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) <= 0)
		die("KVM_CAP_USER_MEMORY not supported");
	vm->vm_fd = IOCTL(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (IOCTL(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0)
		IOCTL(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000);
	mmap_size = IOCTL(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run))
		die("KVM_GET_VCPU_MMAP_SIZE returned %d", mmap_size);
	vm->run_size = (size_t)mmap_size;
}

static struct kvm_cpuid2 *get_supported_cpuid(struct vm *vm)
{
	int nent = 128;

	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
		int ret;

		if (!c)
			die("out of memory");
		c->nent = nent;
		ret = ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c);
		if (ret == 0)
			return c;
		free(c);
		if (errno != E2BIG || nent > 4096)
			die("ioctl KVM_GET_SUPPORTED_CPUID failed: %s (errno %d)",
			    strerror(errno), errno);
		nent *= 2;
	}
}

static void load_vcpu_state(struct vcpu *vc);

static void setup_vcpu(struct vm *vm, int id, struct kvm_cpuid2 *cpuid)
{
	struct vcpu *vc = &vm->vcpus[id];

	vc->vm = vm;
	vc->id = id;
	vc->fd = IOCTL(vm->vm_fd, KVM_CREATE_VCPU, id);
	vc->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vc->fd, 0);
	if (vc->run == MAP_FAILED)
		die("mmap of kvm_run for vCPU %d failed: %s", id, strerror(errno));

	IOCTLP(vc->fd, KVM_SET_CPUID2, cpuid);
	load_vcpu_state(vc);
}

/* The vCPU's registers at the start of a run over its tag table. */
static void load_vcpu_state(struct vcpu *vc)
{
	struct vm *vm = vc->vm;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int id = vc->id;

	IOCTLP(vc->fd, KVM_GET_SREGS, &sregs);
	vm->paging->setup_sregs(vm, &sregs);
	IOCTLP(vc->fd, KVM_SET_SREGS, &sregs);
	if (opt_verbose) {
		IOCTLP(vc->fd, KVM_GET_SREGS, &sregs);
		vlog("vCPU %d: cr0 0x%llx cr3 0x%llx cr4 0x%llx efer 0x%llx", id,
		     (unsigned long long)sregs.cr0, (unsigned long long)sregs.cr3,
		     (unsigned long long)sregs.cr4, (unsigned long long)sregs.efer);
	}

	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_GPA;
	regs.rsp = STACK_GPA(id) + STACK_SIZE;
	regs.rsi = vc->table_gva;
	regs.rcx = vc->nr_entries;
	regs.rdi = vm->first_cr3 != vm->cr3 ? vm->cr3 : 0; /* CR3 for the second pass */
	regs.rflags = 0x2; /* IF=0 */
	IOCTLP(vc->fd, KVM_SET_REGS, &regs);
}

/*
 * GVA and GPA of data page i of vCPU v (see l2vmm-notes.md).
 *
 * 4K guest pages: GPA = slot-1 page scrambled over 1024 pages (4 MiB); with
 * hugetlb1g, page lin additionally lands in the (lin % 8)-th 128 MiB region
 * of the 1 GiB slot.  --guest-2m: vCPU v's GVA block (2 MiB aligned) maps to
 * a 2 MiB GPA block with one guest 2M PDE; the page offset within the block
 * is the same on both sides (scrambled over the 512 pages of the block).
 */
static void data_page_addr(struct vm *vm, int v, int i, uint64_t *gva, uint64_t *gpa)
{
	uint64_t lin = (uint64_t)v * (uint64_t)opt_pages + (uint64_t)i;
	bool big = vm->slots[1].size > SLOT1_SIZE;

	if (!opt_guest_2m) {
		uint64_t pno = (lin * SCRAMBLE_MUL + SCRAMBLE_ADD) & (SLOT1_PAGES - 1);

		*gva = vm->paging->is32 ? DATA32_GVA(v, i) : DATA_GVA(v, i);
		*gpa = SLOT1_GPA + pno * PAGE_SIZE + (big ? (lin % 8) * 128 * MIB : 0);
	} else {
		uint64_t off = (((uint64_t)i * SCRAMBLE_MUL + SCRAMBLE_ADD) & 511) * PAGE_SIZE;
		/* anon (2 blocks): vCPU0 -> block 1, vCPU1 -> block 0;
		 * hugetlb1g (512 blocks): vCPU0 -> block 317, vCPU1 -> block 42 */
		uint64_t blk = big ? (v == 0 ? 317 : 42) : (uint64_t)(NR_VCPUS - 1 - v);

		*gva = (vm->paging->is32 ? DATA32_GVA_2M(v) : DATA_GVA_2M(v)) + off;
		*gpa = SLOT1_GPA + blk * HUGE_2M + off;
	}
	if (*gpa + PAGE_SIZE > vm->slots[1].gpa + vm->slots[1].size)
		die("internal: data GPA 0x%llx outside slot 1", (unsigned long long)*gpa);
}

/* Build the guest page tables, code, tag tables and the list of tagged pages. */
/* Append to runs[], joining onto the last run when contiguous; a repeat of
 * an existing run (a 2M guest page mapped once per tagged page) is dropped. */
static void add_xrun(struct xrun *runs, int *n, uint64_t from, uint64_t to, uint64_t len)
{
	struct xrun *last = *n ? &runs[*n - 1] : NULL;

	for (int i = 0; i < *n; i++)
		if (runs[i].from <= from && from + len <= runs[i].from + runs[i].len &&
		    runs[i].to + (from - runs[i].from) == to)
			return;
	if (last && last->from + last->len == from && last->to + last->len == to) {
		last->len += len;
		return;
	}
	if (*n >= MAX_XRUNS)
		die("internal: more than %d translation runs", MAX_XRUNS);
	runs[(*n)++] = (struct xrun){from, to, len};
}

/*
 * What a Linux guest kernel leaves in its memory for drgn: the VMCOREINFO
 * note (as crash_save_vmcoreinfo_init() writes it: namesz 11, type 0, the
 * text) and the kernel's page tables from swapper_pg_dir, with phys_base 0
 * (so swapper_pg_dir's address is __START_KERNEL_map + its GPA).  Two
 * kernel addresses are mapped: one 4K page onto the first tagged page, and
 * one 2M page onto the block holding the last tagged page.  The guest never
 * touches these pages; drgn_kvmwalk reads them through the memslots.
 */
static void plant_linux_layout(struct vm *vm)
{
	const struct tagged_page *first = &vm->pages[0], *last = NULL;
	uint8_t *note = gpa_to_hva(vm, FAKE_NOTE_GPA);
	uint32_t hdr[3];
	char text[512];
	int n;

	/* the last tagged page that --host-changes leaves alone */
	for (int p = vm->nr_pages - 1; p >= 0 && !last; p--)
		if (vm->pages[p].change == HC_NONE)
			last = &vm->pages[p];

	n = snprintf(text, sizeof(text),
		     "OSRELEASE=%s\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)=%llx\n"
		     "NUMBER(phys_base)=0\nKERNELOFFSET=0\nNUMBER(pgtable_l5_enabled)=0\n",
		     FAKE_OSRELEASE, (unsigned long long)(START_KERNEL_MAP + FAKE_PGD_GPA));
	if (n <= 0 || n >= (int)sizeof(text))
		die("internal: vmcoreinfo text too long");
	memset(note, 0, PAGE_SIZE);
	hdr[0] = 11; /* strlen("VMCOREINFO") + 1 */
	hdr[1] = (uint32_t)n;
	hdr[2] = 0;
	memcpy(note, hdr, sizeof(hdr));
	memcpy(note + 12, "VMCOREINFO", 11);
	memcpy(note + 24, text, (size_t)n);
	for (uint64_t t = FAKE_PGD_GPA; t <= FAKE_PT_GPA; t += PAGE_SIZE)
		memset(gpa_to_hva(vm, t), 0, PAGE_SIZE);
	wr64(vm, FAKE_PGD_GPA + 8 * ((FAKE_KVA_4K >> 39) & 511), FAKE_PUD_GPA | 3);
	wr64(vm, FAKE_PUD_GPA + 8 * ((FAKE_KVA_4K >> 30) & 511), FAKE_PMD_GPA | 3);
	wr64(vm, FAKE_PMD_GPA + 8 * ((FAKE_KVA_4K >> 21) & 511), FAKE_PT_GPA | 3);
	wr64(vm, FAKE_PT_GPA + 8 * ((FAKE_KVA_4K >> 12) & 511), first->gpa | 3);
	wr64(vm, FAKE_PMD_GPA + 8 * ((FAKE_KVA_2M >> 21) & 511),
	     (last->gpa & ~(HUGE_2M - 1)) | 0x83); /* present, writable, PS */
	vm->fake_kva[0] = FAKE_KVA_4K;
	vm->fake_gpa[0] = first->gpa;
	vm->fake_tag[0] = first->tag;
	vm->fake_kva[1] = FAKE_KVA_2M + (last->gpa & (HUGE_2M - 1));
	vm->fake_gpa[1] = last->gpa;
	vm->fake_tag[1] = last->tag;
}

static void build_guest(struct vm *vm)
{
	int npages = NR_VCPUS * (opt_pages + LOWTAGS_PER_VCPU) + HC_SLOT3_PAGES + HC_SLOT4_PAGES;
	int k = 0;

	vm->pt_next = PTPOOL_GPA;
	vm->paging->init(vm);

	/* identity map of the low 2 MiB (slot 0), 4K pages */
	for (uint64_t a = 0; a < SLOT0_SIZE; a += PAGE_SIZE)
		vm->paging->map(vm, SLOT0_GPA + a, SLOT0_GPA + a);
	add_xrun(vm->guest_maps, &vm->nr_guest_maps, SLOT0_GPA, SLOT0_GPA, SLOT0_SIZE);

	memcpy(gpa_to_hva(vm, CODE_GPA), vm->paging->code, vm->paging->code_len);

	vm->pages = calloc((size_t)npages, sizeof(*vm->pages));
	if (!vm->pages)
		die("out of memory");

	for (int v = 0; v < NR_VCPUS; v++) {
		struct vcpu *vc = &vm->vcpus[v];
		int idx = 0;

		/* data pages in slot 1, scrambled GPAs */
		for (int i = 0; i < opt_pages; i++, idx++, k++) {
			struct tagged_page *tp = &vm->pages[k];

			tp->vcpu = v;
			tp->index = idx;
			tp->slot = 1;
			data_page_addr(vm, v, i, &tp->gva, &tp->gpa);
			tp->tag = MAKE_TAG(v, idx, 1);
			if (opt_guest_2m) {
				vm->paging->map_2m(vm, tp->gva & ~(HUGE_2M - 1),
						   tp->gpa & ~(HUGE_2M - 1));
				add_xrun(vm->guest_maps, &vm->nr_guest_maps,
					 tp->gva & ~(HUGE_2M - 1), tp->gpa & ~(HUGE_2M - 1),
					 HUGE_2M);
			} else {
				vm->paging->map(vm, tp->gva, tp->gpa);
				add_xrun(vm->guest_maps, &vm->nr_guest_maps, tp->gva,
					 tp->gpa, PAGE_SIZE);
			}
		}
		/* identity-mapped tagged pages in slot 0 */
		for (int j = 0; j < LOWTAGS_PER_VCPU; j++, idx++, k++) {
			struct tagged_page *tp = &vm->pages[k];

			tp->vcpu = v;
			tp->index = idx;
			tp->slot = 0;
			tp->gva = LOWTAG_GPA(v, j);
			tp->gpa = LOWTAG_GPA(v, j);
			tp->tag = MAKE_TAG(v, idx, 0);
		}
		/* --host-changes: the last vCPU's last three data pages, and
		 * pages in the memslots that will be moved and deleted (GVAs
		 * after its data pages) */
		if (opt_host_changes && v == NR_VCPUS - 1) {
			vm->pages[k - LOWTAGS_PER_VCPU - 1].change = HC_DONTNEED;
			vm->pages[k - LOWTAGS_PER_VCPU - 2].change = HC_READONLY;
			vm->pages[k - LOWTAGS_PER_VCPU - 3].change = HC_READONLY_READ;
			for (int j = 0; j < HC_SLOT3_PAGES + HC_SLOT4_PAGES; j++, idx++, k++) {
				struct tagged_page *tp = &vm->pages[k];
				bool moved = j < HC_SLOT3_PAGES;

				tp->vcpu = v;
				tp->index = idx;
				tp->slot = moved ? 3 : 4;
				tp->gva = DATA_GVA(v, opt_pages + j);
				tp->gpa = moved ? SLOT3_GPA + (uint64_t)j * PAGE_SIZE
						: SLOT4_GPA + (uint64_t)(j - HC_SLOT3_PAGES) * PAGE_SIZE;
				tp->tag = MAKE_TAG(v, idx, tp->slot);
				tp->change = moved ? HC_MOVED : HC_DELETED;
				if (moved)
					tp->new_gpa = tp->gpa - SLOT3_GPA + SLOT3_NEW_GPA;
				vm->paging->map(vm, tp->gva, tp->gpa);
				add_xrun(vm->guest_maps, &vm->nr_guest_maps, tp->gva, tp->gpa,
					 PAGE_SIZE);
			}
		}

		vc->table_gva = TAGTAB_GPA(v); /* identity mapped */
		vc->nr_entries = (uint64_t)idx;
		if ((uint64_t)idx * 16 > TAGTAB_SIZE)
			die("internal: tag table for vCPU %d too large", v);
	}
	vm->nr_pages = k;

	/* fill the tag tables */
	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];
		uint64_t ent = TAGTAB_GPA(tp->vcpu) + (uint64_t)tp->index * 16;

		wr64(vm, ent, tp->gva);
		wr64(vm, ent + 8, tp->tag);
		tp->hva = (uint64_t)(uintptr_t)gpa_to_hva(vm, tp->gpa);
		tp->host_thp = -1;

		/* self-check of the page tables we just wrote */
		if (vm->paging->walk(vm, tp->gva) != tp->gpa)
			die("internal: guest page-table self-check failed for gva 0x%llx",
			    (unsigned long long)tp->gva);
	}
	/*
	 * --switch-cr3: start on a copy of the top-level table, then switch to
	 * the original.  Under shadow paging KVM keeps the first root in
	 * mmu->prev_roots (fast_pgd_switch()), where --root prev finds it.
	 */
	vm->first_cr3 = vm->cr3;
	if (opt_switch_cr3) {
		vm->first_cr3 = pt_alloc(vm);
		memcpy(gpa_to_hva(vm, vm->first_cr3), gpa_to_hva(vm, vm->cr3), PAGE_SIZE);
	}
	plant_linux_layout(vm);
	vlog("guest: cr3 0x%llx (first 0x%llx), %d page-table pages, %d tagged pages",
	     (unsigned long long)vm->cr3, (unsigned long long)vm->first_cr3, vm->nr_pt_pages,
	     vm->nr_pages);
}

/* ------------------------------------------------------------------ */
/* vCPU threads                                                        */
/* ------------------------------------------------------------------ */
static const char *exit_reason_name(uint32_t r)
{
	switch (r) {
	case KVM_EXIT_UNKNOWN: return "UNKNOWN";
	case KVM_EXIT_EXCEPTION: return "EXCEPTION";
	case KVM_EXIT_IO: return "IO";
	case KVM_EXIT_HYPERCALL: return "HYPERCALL";
	case KVM_EXIT_DEBUG: return "DEBUG";
	case KVM_EXIT_HLT: return "HLT";
	case KVM_EXIT_MMIO: return "MMIO";
	case KVM_EXIT_IRQ_WINDOW_OPEN: return "IRQ_WINDOW_OPEN";
	case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
	case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
	case KVM_EXIT_INTR: return "INTR";
	case KVM_EXIT_SET_TPR: return "SET_TPR";
	case KVM_EXIT_TPR_ACCESS: return "TPR_ACCESS";
	case KVM_EXIT_NMI: return "NMI";
	case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
	case KVM_EXIT_SYSTEM_EVENT: return "SYSTEM_EVENT";
	default: return "?";
	}
}

static void vcpu_fatal(struct vcpu *vc, const char *what)
{
	struct kvm_run *run = vc->run;
	struct kvm_regs regs;
	struct kvm_sregs sregs;

	fprintf(stderr, "l2vmm: error: vCPU %d: %s: exit reason %u (%s)\n", vc->id, what,
		run->exit_reason, exit_reason_name(run->exit_reason));
	switch (run->exit_reason) {
	case KVM_EXIT_FAIL_ENTRY:
		fprintf(stderr, "  hardware_entry_failure_reason 0x%llx cpu %u\n",
			(unsigned long long)run->fail_entry.hardware_entry_failure_reason,
			run->fail_entry.cpu);
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		fprintf(stderr, "  suberror %u ndata %u:", run->internal.suberror,
			run->internal.ndata);
		for (uint32_t i = 0; i < run->internal.ndata && i < 16; i++)
			fprintf(stderr, " 0x%llx", (unsigned long long)run->internal.data[i]);
		fprintf(stderr, "\n");
		break;
	case KVM_EXIT_IO:
		fprintf(stderr, "  io: dir %u size %u port 0x%x count %u\n", run->io.direction,
			run->io.size, run->io.port, run->io.count);
		break;
	case KVM_EXIT_MMIO:
		fprintf(stderr, "  mmio: addr 0x%llx len %u write %u\n",
			(unsigned long long)run->mmio.phys_addr, run->mmio.len,
			run->mmio.is_write);
		break;
	case KVM_EXIT_EXCEPTION:
		fprintf(stderr, "  exception %u error_code 0x%x\n", run->ex.exception,
			run->ex.error_code);
		break;
	}
	if (ioctl(vc->fd, KVM_GET_REGS, &regs) == 0) {
		fprintf(stderr,
			"  rip %016llx rsp %016llx rflags %016llx\n"
			"  rax %016llx rbx %016llx rcx %016llx rdx %016llx\n"
			"  rsi %016llx rdi %016llx rbp %016llx\n",
			regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, regs.rcx,
			regs.rdx, regs.rsi, regs.rdi, regs.rbp);
	} else {
		fprintf(stderr, "  (KVM_GET_REGS failed: %s)\n", strerror(errno));
	}
	if (ioctl(vc->fd, KVM_GET_SREGS, &sregs) == 0) {
		fprintf(stderr,
			"  cr0 %016llx cr2 %016llx cr3 %016llx cr4 %016llx efer %016llx\n"
			"  cs sel %04x base %llx l %u db %u type %u\n",
			sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer,
			sregs.cs.selector, (unsigned long long)sregs.cs.base, sregs.cs.l,
			sregs.cs.db, sregs.cs.type);
	} else {
		fprintf(stderr, "  (KVM_GET_SREGS failed: %s)\n", strerror(errno));
	}
	fflush(stderr);
	exit(EXIT_ERR);
}

/*
 * KVM's binary statistics of a VM or vCPU fd (KVM_GET_STATS_FD, Linux 5.14+)
 * as a JSON object {name: value or [values]}; "null" where the kernel lacks
 * the ioctl.  Reading them changes none of them.
 */
static char *read_stats_json(int fd)
{
#ifdef KVM_GET_STATS_FD
	struct kvm_stats_header hdr;
	int sfd = ioctl(fd, KVM_GET_STATS_FD, NULL);
	size_t desc_size, cap = 4096, len = 0;
	char *descs, *out;

	if (sfd < 0)
		return strdup("null");
	if (pread(sfd, &hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr))
		die("KVM stats header: %s", strerror(errno));
	desc_size = sizeof(struct kvm_stats_desc) + hdr.name_size;
	descs = calloc(hdr.num_desc, desc_size);
	out = malloc(cap);
	if (!descs || !out)
		die("out of memory");
	if (pread(sfd, descs, desc_size * hdr.num_desc, hdr.desc_offset) !=
	    (ssize_t)(desc_size * hdr.num_desc))
		die("KVM stats descriptors: %s", strerror(errno));
	len += (size_t)snprintf(out, cap, "{");
	for (uint32_t i = 0; i < hdr.num_desc; i++) {
		struct kvm_stats_desc *d = (void *)(descs + i * desc_size);
		uint64_t vals[1024];

		if (d->size > 1024)
			die("KVM stat %s has %u values", d->name, d->size);
		if (pread(sfd, vals, d->size * sizeof(uint64_t), hdr.data_offset + d->offset) !=
		    (ssize_t)(d->size * sizeof(uint64_t)))
			die("KVM stat %s: %s", d->name, strerror(errno));
		while (cap - len < 64 + hdr.name_size + 24 * (size_t)d->size) {
			cap *= 2;
			out = realloc(out, cap);
			if (!out)
				die("out of memory");
		}
		len += (size_t)snprintf(out + len, cap - len, "%s\"%s\": %s", i ? ", " : "",
					d->name, d->size == 1 ? "" : "[");
		for (uint32_t j = 0; j < d->size; j++)
			len += (size_t)snprintf(out + len, cap - len, "%s%llu", j ? ", " : "",
						(unsigned long long)vals[j]);
		if (d->size != 1)
			len += (size_t)snprintf(out + len, cap - len, "]");
	}
	snprintf(out + len, cap - len, "}");
	free(descs);
	close(sfd);
	return out;
#else
	(void)fd;
	return strdup("null");
#endif
}

/* KVM's own view of the guest translation of each of this vCPU's tagged
 * pages must agree with the guest's tables (from the vCPU's own thread: a
 * vCPU ioctl loads the vCPU on the caller's CPU, and vcpu->cpu follows). */
static void translate_own_pages(struct vcpu *vc)
{
	struct vm *vm = vc->vm;

	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];
		struct kvm_translation tr;

		if (tp->vcpu != vc->id)
			continue;
		memset(&tr, 0, sizeof(tr));
		tr.linear_address = tp->gva;
		IOCTLP(vc->fd, KVM_TRANSLATE, &tr);
		if (!tr.valid || tr.physical_address != tp->gpa)
			die("KVM_TRANSLATE(vcpu %d, gva 0x%llx) = 0x%llx valid %u, expected 0x%llx",
			    tp->vcpu, (unsigned long long)tp->gva,
			    (unsigned long long)tr.physical_address, tr.valid,
			    (unsigned long long)tp->gpa);
	}
}

/* What the vCPU's thread records once the guest halted, from that thread,
 * after its last ioctl but the stats read. */
static void record_vcpu_state(struct vcpu *vc)
{
	translate_own_pages(vc);
	vc->exit_reason = vc->run->exit_reason;
	IOCTLP(vc->fd, KVM_GET_SREGS, &vc->sregs);
	IOCTLP(vc->fd, KVM_GET_REGS, &vc->regs);
	IOCTLP(vc->fd, KVM_GET_MP_STATE, &vc->mp_state);
	vc->stats = read_stats_json(vc->fd);
}

static void churn_restart(struct vcpu *vc);
static volatile int churn_mmio_exits;

static void *vcpu_thread(void *arg)
{
	struct vcpu *vc = arg;
	char name[16];
	cpu_set_t set;
	long ncpus = sysconf(_SC_NPROCESSORS_ONLN);

	/* Pinned, so that the CPU it last ran on is known (--list's "cpu"). */
	vc->tid = (int)syscall(SYS_gettid);
	vc->cpu = (int)(vc->id % (ncpus > 0 ? ncpus : 1));
	CPU_ZERO(&set);
	CPU_SET(vc->cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		die("pinning vCPU %d to CPU %d failed", vc->id, vc->cpu);
	snprintf(name, sizeof(name), "l2vmm-vcpu%d", vc->id);
	pthread_setname_np(pthread_self(), name);

	for (;;) {
		if (ioctl(vc->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("ioctl KVM_RUN on vCPU %d failed: %s (errno %d)", vc->id,
			    strerror(errno), errno);
		}
		switch (vc->run->exit_reason) {
		case KVM_EXIT_HLT:
			if (opt_churn_log && __atomic_load_n(&vc->halted, __ATOMIC_ACQUIRE) >= 1) {
				/* --churn-log: after the first run, run over the
				 * tag table again and again (a short pause between
				 * passes leaves L1's CPUs to the rest) */
				__atomic_add_fetch(&vc->halted, 1, __ATOMIC_ACQ_REL);
				while (!__atomic_load_n(&vc->vm->churning, __ATOMIC_ACQUIRE))
					usleep(1000);
				while (__atomic_load_n(&vc->vm->churn_hold, __ATOMIC_ACQUIRE)) {
					__atomic_store_n(&vc->held, 1, __ATOMIC_RELEASE);
					usleep(1000);
				}
				__atomic_store_n(&vc->held, 0, __ATOMIC_RELEASE);
				usleep(2000);
				churn_restart(vc);
				continue;
			}
			vlog("vCPU %d halted", vc->id);
			if (vc->stats)
				free(vc->stats);
			record_vcpu_state(vc);
			if (__atomic_add_fetch(&vc->halted, 1, __ATOMIC_ACQ_REL) == 1 &&
			    opt_churn_log) {
				while (!__atomic_load_n(&vc->vm->churning, __ATOMIC_ACQUIRE))
					usleep(1000);
				churn_restart(vc);
				continue;
			}
			if (__atomic_load_n(&vc->halted, __ATOMIC_ACQUIRE) == 1 &&
			    opt_host_changes) {
				/* main() changes the memory, then lets it run again */
				while (!__atomic_load_n(&vc->vm->second_run, __ATOMIC_ACQUIRE))
					usleep(1000);
				load_vcpu_state(vc);
				continue;
			}
			/* The thread stays (the tool reads its pid and name) and
			 * never touches the vCPU again. */
			for (;;)
				pause();
		case KVM_EXIT_INTR:
			continue; /* signal arrived; nothing to do */
		case KVM_EXIT_MMIO:
			if (opt_churn_log) {
				/* --churn-log: slot 1 deleted for a moment (the
				 * vCPUs wait while it is, so none is expected): a
				 * store is dropped, a load reads zeros */
				if (!vc->run->mmio.is_write)
					memset(vc->run->mmio.data, 0, sizeof(vc->run->mmio.data));
				__atomic_add_fetch(&churn_mmio_exits, 1, __ATOMIC_RELAXED);
				continue;
			}
			/* fall through */
		default:
			vcpu_fatal(vc, "unexpected exit");
		}
	}
}

/* ------------------------------------------------------------------ */
/* --churn-log: the host keeps changing the guest's memory             */
/* ------------------------------------------------------------------ */
/*
 * After READY the vCPUs run over their tag tables again and again, while
 * one thread changes slot 1 on the host in a cycle (MADV_DONTNEED, mprotect
 * there and back, MADV_COLLAPSE, KSM merging and unmerging (--churn-ksm), slot 1 deleted
 * and added again) and another samples /proc/self/pagemap for every page of
 * slots 0 and 1 every CHURN_SAMPLE_US.  Each change and each PFN seen goes
 * to the log as one JSON line (see l2vmm-notes.md, "Host that keeps
 * changing").
 */
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#define CHURN_SAMPLE_US 20000
#define CHURN_PAUSE_US  100000
#define CHURN_KSM_BYTE  0x5a
#define CHURN_HOLD_S    30 /* how long the vCPUs may take to come to a halt */

enum churn_kind { CK_WRITE, CK_DONTNEED, CK_MPROTECT, CK_KSM };

static FILE *churn_log;
static pthread_mutex_t churn_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *churn_last;      /* last pagemap entry per slot-0/1 page */
static int churn_pm_fd = -1;

/* What the churn does to data page i of vCPU 0 (vCPU 1's pages are written
 * and left alone by the host; the thread's changes of slot 1 reach them too). */
static enum churn_kind churn_kind_of(const struct tagged_page *tp)
{
	if (tp->vcpu != 0 || tp->slot != 1)
		return CK_WRITE;
	switch (tp->index % 8) {
	case 0: return CK_DONTNEED;
	case 1: return CK_MPROTECT;
	case 2: return CK_KSM;
	default: return CK_WRITE;
	}
}

static double churn_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Registers for another pass over the tag table (no KVM_SET_SREGS: the
 * guest's CR3 stays, so KVM keeps its roots). */
static void churn_restart(struct vcpu *vc)
{
	struct kvm_regs regs;

	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_GPA;
	regs.rsp = STACK_GPA(vc->id) + STACK_SIZE;
	regs.rsi = vc->table_gva;
	regs.rcx = vc->nr_entries;
	regs.rflags = 0x2;
	IOCTLP(vc->fd, KVM_SET_REGS, &regs);
}

/* Pages of slots 0 and 1, in GPA order: slot 0 first. */
static int churn_npages(struct vm *vm)
{
	return (int)((vm->slots[0].size + vm->slots[1].size) / PAGE_SIZE);
}

static void churn_page(struct vm *vm, int k, uint64_t *gpa, uint64_t *hva)
{
	int n0 = (int)(vm->slots[0].size / PAGE_SIZE);
	const struct memslot *ms = k < n0 ? &vm->slots[0] : &vm->slots[1];
	uint64_t off = (uint64_t)(k < n0 ? k : k - n0) * PAGE_SIZE;

	*gpa = ms->gpa + off;
	*hva = (uint64_t)(uintptr_t)ms->hva + off;
}

/* One pagemap pass: a line per page whose entry changed since the last
 * (the first pass logs every present page).  Called with churn_lock held. */
static void churn_sample(struct vm *vm, const char *why)
{
	int n = churn_npages(vm);
	double t = churn_now();
	int changed = 0;

	for (int k = 0; k < n; k++) {
		uint64_t gpa, hva, ent, pfn;

		churn_page(vm, k, &gpa, &hva);
		if (pread(churn_pm_fd, &ent, sizeof(ent), (off_t)((hva >> PAGE_SHIFT) * 8)) !=
		    (ssize_t)sizeof(ent))
			die("read /proc/self/pagemap for hva 0x%llx failed", (unsigned long long)hva);
		pfn = (ent >> 63 & 1) ? ent & ((1ULL << 55) - 1) : 0;
		if (pfn == churn_last[k])
			continue;
		churn_last[k] = pfn;
		changed++;
		fprintf(churn_log, "{\"t\": %.6f, \"gpa\": %llu, \"pfn\": %llu}\n", t,
			(unsigned long long)gpa, (unsigned long long)pfn);
	}
	if (changed && why)
		fprintf(churn_log, "{\"t\": %.6f, \"sample\": \"%s\", \"changed\": %d}\n", t, why,
			changed);
	fflush(churn_log);
}

static void *churn_sampler(void *arg)
{
	struct vm *vm = arg;

	for (;;) {
		pthread_mutex_lock(&churn_lock);
		churn_sample(vm, NULL);
		pthread_mutex_unlock(&churn_lock);
		usleep(CHURN_SAMPLE_US);
	}
	return NULL;
}

/* Log one change: its name, the pages, and its result (0 or an errno). */
static void churn_note(const char *op, const uint64_t *gpas, int n, int err)
{
	fprintf(churn_log, "{\"t\": %.6f, \"op\": \"%s\", \"errno\": %d, \"gpas\": [", churn_now(),
		op, err);
	for (int i = 0; i < n; i++)
		fprintf(churn_log, "%s%llu", i ? ", " : "", (unsigned long long)gpas[i]);
	fprintf(churn_log, "]}\n");
	fflush(churn_log);
}

/* madvise/mprotect of every page of one kind, one call per page. */
static void churn_pages(struct vm *vm, enum churn_kind kind, const char *op, int advice, int prot)
{
	uint64_t gpas[MAX_PAGES_PER_VCPU];
	int n = 0, err = 0;

	for (int p = 0; p < vm->nr_pages && n < MAX_PAGES_PER_VCPU; p++) {
		struct tagged_page *tp = &vm->pages[p];
		void *hva = (void *)(uintptr_t)tp->hva;
		int r;

		if (churn_kind_of(tp) != kind)
			continue;
		r = advice >= 0 ? madvise(hva, PAGE_SIZE, advice) : mprotect(hva, PAGE_SIZE, prot);
		if (r < 0 && !err)
			err = errno;
		gpas[n++] = tp->gpa;
	}
	churn_note(op, gpas, n, err);
}

static void churn_slot1(struct vm *vm, const char *op, int advice)
{
	struct memslot *ms = &vm->slots[1];
	uint64_t gpa = ms->gpa;
	int err = madvise(ms->hva, ms->size, advice) < 0 ? errno : 0;

	churn_note(op, &gpa, 1, err);
}

/*
 * The vCPUs wait at their next halt while slot 1 is gone (hold), and run
 * again once it is back.  (A guest store to the deleted slot, which KVM
 * emulates as MMIO, ended in a triple fault of the guest under nested SVM
 * in TCG: the cause was not found, so the guest does not touch the slot
 * while it is deleted.)
 */
static bool churn_hold(struct vm *vm, bool hold)
{
	double t0 = churn_now(), until = t0 + CHURN_HOLD_S;
	int before[NR_VCPUS], v;

	__atomic_store_n(&vm->churn_hold, hold ? 1 : 0, __ATOMIC_RELEASE);
	if (!hold)
		return true;
	for (v = 0; v < NR_VCPUS; v++)
		before[v] = __atomic_load_n(&vm->vcpus[v].halted, __ATOMIC_ACQUIRE);
	for (v = 0; v < NR_VCPUS; v++) {
		while (!__atomic_load_n(&vm->vcpus[v].held, __ATOMIC_ACQUIRE) &&
		       churn_now() <= until)
			usleep(1000);
		if (!__atomic_load_n(&vm->vcpus[v].held, __ATOMIC_ACQUIRE))
			break;
	}
	if (v == NR_VCPUS) {
		fprintf(churn_log, "{\"t\": %.6f, \"hold\": %.6f}\n", churn_now(), churn_now() - t0);
		return true;
	}
	/* A vCPU that did not come to a halt: say how far each got, and go on
	 * without the memslot change this time. */
	fprintf(churn_log, "{\"t\": %.6f, \"op\": \"hold_timeout\", \"errno\": %d, \"gpas\": [], "
		"\"passes_before\": [%d, %d], \"passes_after\": [%d, %d], \"held\": [%d, %d]}\n",
		churn_now(), ETIMEDOUT, before[0], before[1], vm->vcpus[0].halted,
		vm->vcpus[1].halted, vm->vcpus[0].held, vm->vcpus[1].held);
	fflush(churn_log);
	__atomic_store_n(&vm->churn_hold, 0, __ATOMIC_RELEASE);
	return false;
}

static void churn_memslot(struct vm *vm, bool add)
{
	struct memslot *ms = &vm->slots[1];
	struct kvm_userspace_memory_region r = {
		.slot = (uint32_t)ms->slot,
		.flags = ms->flags,
		.guest_phys_addr = ms->gpa,
		.memory_size = add ? ms->size : 0,
		.userspace_addr = (uint64_t)(uintptr_t)ms->hva,
	};
	uint64_t gpa = ms->gpa;

	IOCTLP(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);
	churn_note(add ? "memslot_add" : "memslot_delete", &gpa, 1, 0);
}

/* One change, with a pagemap pass before and after it (what it did). */
#define CHURN_STEP(vm, why, call)                 \
	do {                                      \
		pthread_mutex_lock(&churn_lock);  \
		churn_sample((vm), "before " why); \
		call;                             \
		churn_sample((vm), "after " why);  \
		pthread_mutex_unlock(&churn_lock); \
		usleep(CHURN_PAUSE_US);           \
	} while (0)

static void *churn_thread(void *arg)
{
	struct vm *vm = arg;

	for (;;) {
		CHURN_STEP(vm, "madv_dontneed",
			   churn_pages(vm, CK_DONTNEED, "madv_dontneed", MADV_DONTNEED, 0));
		CHURN_STEP(vm, "mprotect_read",
			   churn_pages(vm, CK_MPROTECT, "mprotect_read", -1, PROT_READ));
		CHURN_STEP(vm, "mprotect_write",
			   churn_pages(vm, CK_MPROTECT, "mprotect_write", -1,
				       PROT_READ | PROT_WRITE));
		if (opt_churn_collapse)
			CHURN_STEP(vm, "madv_collapse",
				   churn_slot1(vm, "madv_collapse", MADV_COLLAPSE));
		if (opt_churn_ksm) {
			CHURN_STEP(vm, "ksm_merge", churn_slot1(vm, "ksm_merge", MADV_MERGEABLE));
			usleep(CHURN_PAUSE_US * 4); /* ksmd's time to merge */
			CHURN_STEP(vm, "ksm_unmerge",
				   churn_slot1(vm, "ksm_unmerge", MADV_UNMERGEABLE));
		}
		if (!churn_hold(vm, true))
			continue;
		CHURN_STEP(vm, "memslot_delete", churn_memslot(vm, false));
		CHURN_STEP(vm, "memslot_add", churn_memslot(vm, true));
		churn_hold(vm, false);
	}
	return NULL;
}

/* Before the churn: the KSM pages' contents made the same (the guest only
 * reads them, and the mprotect pages, from now on), and the log opened. */
static void churn_start(struct vm *vm)
{
	uint64_t n[NR_VCPUS] = {0};
	pthread_t t;
	int err;

	churn_log = fopen(opt_churn_log, "w");
	if (!churn_log)
		die("cannot open --churn-log %s: %s", opt_churn_log, strerror(errno));
	churn_pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (churn_pm_fd < 0)
		die("open /proc/self/pagemap failed: %s", strerror(errno));
	churn_last = calloc((size_t)churn_npages(vm), sizeof(*churn_last));
	if (!churn_last)
		die("out of memory");
	fprintf(churn_log,
		"{\"t\": %.6f, \"start\": true, \"pid\": %d, \"ksm\": %s, \"collapse\": %s, "
		"\"pages\": [",
		churn_now(), (int)getpid(), opt_churn_ksm ? "true" : "false",
		opt_churn_collapse ? "true" : "false");
	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];
		static const char *const kinds[] = {"write", "madv_dontneed", "mprotect", "ksm"};
		enum churn_kind kind = churn_kind_of(tp);
		uint64_t ent = TAGTAB_GPA(tp->vcpu) + n[tp->vcpu]++ * 16;

		if (kind == CK_KSM)
			memset((void *)(uintptr_t)tp->hva, CHURN_KSM_BYTE, PAGE_SIZE);
		/* bit 0: the guest loads instead of storing */
		wr64(vm, ent, tp->gva | (kind == CK_MPROTECT || kind == CK_KSM ? 1 : 0));
		wr64(vm, ent + 8, tp->tag);
		fprintf(churn_log, "%s{\"vcpu\": %d, \"gva\": %llu, \"gpa\": %llu, \"kind\": \"%s\"}",
			p ? ", " : "", tp->vcpu, (unsigned long long)tp->gva,
			(unsigned long long)tp->gpa, kinds[kind]);
	}
	fprintf(churn_log, "]}\n");
	pthread_mutex_lock(&churn_lock);
	churn_sample(vm, "start");
	pthread_mutex_unlock(&churn_lock);
	if ((err = pthread_create(&t, NULL, churn_sampler, vm)) ||
	    (err = pthread_create(&t, NULL, churn_thread, vm)))
		die("pthread_create for the churn failed: %s", strerror(err));
	__atomic_store_n(&vm->churning, 1, __ATOMIC_RELEASE);
}

/* At the stop: the last line, with the counts (a log without it was cut). */
static void churn_stop(struct vm *vm)
{
	pthread_mutex_lock(&churn_lock); /* the threads stop with the process */
	churn_sample(vm, "end");
	fprintf(churn_log, "{\"t\": %.6f, \"end\": true, \"mmio_exits\": %d, \"passes\": [%d, %d]}\n",
		churn_now(), churn_mmio_exits, vm->vcpus[0].halted, vm->vcpus[1].halted);
	fclose(churn_log);
}

/* ------------------------------------------------------------------ */
/* Host-side verification and ground truth                             */
/* ------------------------------------------------------------------ */
/* host runs only ever grow at the end: no search for repeats */
static void add_host_run(struct vm *vm, uint64_t gpa, uint64_t hpa)
{
	struct xrun *last = vm->nr_host_runs ? &vm->host_runs[vm->nr_host_runs - 1] : NULL;

	if (last && last->from + last->len == gpa && last->to + last->len == hpa) {
		last->len += PAGE_SIZE;
		return;
	}
	if (vm->nr_host_runs >= MAX_XRUNS)
		die("internal: more than %d host runs", MAX_XRUNS);
	vm->host_runs[vm->nr_host_runs++] = (struct xrun){gpa, hpa, PAGE_SIZE};
}

static void verify_pages(struct vm *vm)
{
	int pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	int kpf_fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);

	if (pm_fd < 0)
		die("open /proc/self/pagemap failed: %s", strerror(errno));
	if (kpf_fd < 0)
		vlog("cannot open /proc/kpageflags (%s); host_thp unknown", strerror(errno));

	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];
		uint64_t val, ent;
		ssize_t n;

		/* the tag must be at the HVA */
		memcpy(&val, (void *)(uintptr_t)tp->hva, sizeof(val));
		if (val != tp->tag)
			die("tag mismatch: vcpu %d gva 0x%llx gpa 0x%llx hva 0x%llx: expected 0x%016llx, found 0x%016llx",
			    tp->vcpu, (unsigned long long)tp->gva, (unsigned long long)tp->gpa,
			    (unsigned long long)tp->hva, (unsigned long long)tp->tag,
			    (unsigned long long)val);

		/* (KVM_TRANSLATE of each page: in the vCPU's own thread,
		 * translate_own_pages()) */

		/* host PFN */
		n = pread(pm_fd, &ent, sizeof(ent), (off_t)((tp->hva >> PAGE_SHIFT) * 8));
		if (n != (ssize_t)sizeof(ent))
			die("read /proc/self/pagemap for hva 0x%llx failed: %s",
			    (unsigned long long)tp->hva, n < 0 ? strerror(errno) : "short read");
		if (!(ent >> 63 & 1))
			die("pagemap: hva 0x%llx not present (entry 0x%016llx)",
			    (unsigned long long)tp->hva, (unsigned long long)ent);
		tp->pfn = ent & ((1ULL << 55) - 1);
		if (tp->pfn == 0)
			die("pagemap: PFN 0 for hva 0x%llx (not root / CAP_SYS_ADMIN?)",
			    (unsigned long long)tp->hva);

		if (kpf_fd >= 0) {
			uint64_t fl;

			if (pread(kpf_fd, &fl, sizeof(fl), (off_t)(tp->pfn * 8)) == (ssize_t)sizeof(fl))
				tp->host_thp = (int)((fl >> KPF_THP) & 1);
		}
	}

	/* PFNs must be distinct */
	for (int a = 0; a < vm->nr_pages; a++)
		for (int b = a + 1; b < vm->nr_pages; b++)
			if (vm->pages[a].pfn == vm->pages[b].pfn)
				die("pages %d and %d share PFN 0x%llx", a, b,
				    (unsigned long long)vm->pages[a].pfn);
	for (int p = 0; p < vm->nr_pages; p++)
		vm->pages[p].host_present = true;

	close(pm_fd);
	if (kpf_fd >= 0)
		close(kpf_fd);
}

/* The pagemap entry of one HVA. */
static uint64_t pagemap_entry(int pm_fd, uint64_t hva)
{
	uint64_t ent;
	ssize_t n = pread(pm_fd, &ent, sizeof(ent), (off_t)((hva >> PAGE_SHIFT) * 8));

	if (n != (ssize_t)sizeof(ent))
		die("read /proc/self/pagemap for hva 0x%llx failed: %s", (unsigned long long)hva,
		    n < 0 ? strerror(errno) : "short read");
	return ent;
}

/*
 * --host-changes, with the vCPUs halted after their first run: move slot 3
 * to SLOT3_NEW_GPA and delete slot 4 (KVM zaps their SPTEs; most kernels
 * zap every root, kvm_mmu_zap_all_fast()), and make the HC_READONLY_READ
 * page read-only, so that the second run's load maps it read-only.
 */
static void host_changes_before(struct vm *vm)
{
	for (int i = 0; i < vm->nr_slots; i++) {
		struct memslot *ms = &vm->slots[i];
		struct kvm_userspace_memory_region r;

		if (ms->slot != 3 && ms->slot != 4)
			continue;
		memset(&r, 0, sizeof(r));
		r.slot = (uint32_t)ms->as_id << 16 | (uint32_t)ms->slot;
		r.flags = ms->flags;
		r.userspace_addr = (uintptr_t)ms->hva;
		r.guest_phys_addr = ms->slot == 3 ? SLOT3_NEW_GPA : ms->gpa;
		r.memory_size = ms->slot == 3 ? ms->size : 0; /* 0: delete */
		IOCTLP(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);
		vlog("memslot %d: %s", ms->slot, ms->slot == 3 ? "moved" : "deleted");
		if (ms->slot == 3)
			ms->gpa = SLOT3_NEW_GPA;
		else
			ms->deleted = true;
	}
	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];

		if (tp->change == HC_READONLY_READ &&
		    mprotect((void *)(uintptr_t)tp->hva, PAGE_SIZE, PROT_READ) < 0)
			die("mprotect(PROT_READ) of hva 0x%llx failed: %s",
			    (unsigned long long)tp->hva, strerror(errno));
	}
}

/*
 * --host-changes, the second run's tag tables: the pages of the moved and
 * deleted memslots are left out (no memslot holds their old GPAs), the page
 * made read-only is read (bit 0 of its gva), every other page written again.
 */
static void second_tag_tables(struct vm *vm)
{
	uint64_t n[NR_VCPUS] = {0};

	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];
		uint64_t ent;

		if (tp->change == HC_MOVED || tp->change == HC_DELETED)
			continue;
		ent = TAGTAB_GPA(tp->vcpu) + n[tp->vcpu]++ * 16;
		wr64(vm, ent, tp->gva | (tp->change == HC_READONLY_READ ? 1 : 0));
		wr64(vm, ent + 8, tp->tag);
	}
	for (int v = 0; v < NR_VCPUS; v++)
		vm->vcpus[v].nr_entries = n[v];
}

/*
 * --host-changes, after the last run: unmap the HC_DONTNEED page and make
 * the HC_READONLY page read-only (the MMU notifiers must make KVM zap both),
 * then check in pagemap that the first is gone and every other changed page
 * is still the same host page.
 */
static void host_changes_after(struct vm *vm)
{
	int pm_fd;

	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];
		void *hva = (void *)(uintptr_t)tp->hva;

		if (tp->change == HC_DONTNEED && madvise(hva, PAGE_SIZE, MADV_DONTNEED) < 0)
			die("madvise(MADV_DONTNEED) of hva %p failed: %s", hva, strerror(errno));
		if (tp->change == HC_READONLY && mprotect(hva, PAGE_SIZE, PROT_READ) < 0)
			die("mprotect(PROT_READ) of hva %p failed: %s", hva, strerror(errno));
	}
	pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm_fd < 0)
		die("open /proc/self/pagemap failed: %s", strerror(errno));
	for (int p = 0; p < vm->nr_pages; p++) {
		struct tagged_page *tp = &vm->pages[p];
		uint64_t ent = pagemap_entry(pm_fd, tp->hva);
		uint64_t pfn = ent & ((1ULL << 55) - 1);

		tp->host_present = (ent >> 63 & 1) && pfn;
		if (tp->change == HC_NONE)
			continue;
		if (tp->change == HC_DONTNEED ? tp->host_present
					      : !tp->host_present || pfn != tp->pfn)
			die("pagemap after %s: hva 0x%llx entry 0x%016llx (pfn was 0x%llx)",
			    host_change_names[tp->change], (unsigned long long)tp->hva,
			    (unsigned long long)ent, (unsigned long long)tp->pfn);
	}
	close(pm_fd);
}

/* Every present host page of every slot, GPA -> HPA, read in one go per
 * slot: the tool's whole-table views are checked against it. */
static void record_host_runs(struct vm *vm)
{
	int pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (pm_fd < 0)
		die("open /proc/self/pagemap failed: %s", strerror(errno));
	for (int i = 0; i < vm->nr_slots; i++) {
		struct memslot *ms = &vm->slots[i];
		uint64_t np = ms->size / PAGE_SIZE;

		if (ms->bench || ms->deleted)
			continue;
		uint64_t *ents = malloc(np * sizeof(*ents));
		uint64_t off = ((uint64_t)(uintptr_t)ms->hva >> PAGE_SHIFT) * 8;
		ssize_t n;

		if (!ents)
			die("out of memory");
		n = pread(pm_fd, ents, np * sizeof(*ents), (off_t)off);
		if (n != (ssize_t)(np * sizeof(*ents)))
			die("read /proc/self/pagemap for slot %d failed: %s", ms->slot,
			    n < 0 ? strerror(errno) : "short read");
		for (uint64_t g = 0; g < np; g++) {
			uint64_t pfn = ents[g] & ((1ULL << 55) - 1);

			if (ents[g] >> 63 & 1 && pfn)
				add_host_run(vm, ms->gpa + g * PAGE_SIZE, pfn << PAGE_SHIFT);
		}
		free(ents);
	}
	close(pm_fd);
}

static void write_xruns(FILE *f, const struct xrun *runs, int n)
{
	for (int i = 0; i < n; i++)
		fprintf(f, "%s[%llu, %llu, %llu]", i ? ", " : "", (unsigned long long)runs[i].from,
			(unsigned long long)runs[i].to, (unsigned long long)runs[i].len);
}

static void write_truth(struct vm *vm)
{
	size_t len = strlen(opt_truth) + 32;
	char *tmp = malloc(len);
	FILE *f;
	int fd;

	if (!tmp)
		die("out of memory");
	snprintf(tmp, len, "%s.tmp.%d", opt_truth, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("open %s failed: %s", tmp, strerror(errno));
	f = fdopen(fd, "w");
	if (!f)
		die("fdopen %s failed: %s", tmp, strerror(errno));

	fprintf(f, "{\"pid\": %d, \"vcpus\": [", (int)getpid());
	for (int v = 0; v < NR_VCPUS; v++)
		fprintf(f, "%s%d", v ? ", " : "", v);
	fprintf(f, "], \"guest_paging\": \"%s\", \"guest_2m\": %s, \"backing\": \"%s\", \"thp\": %s,\n",
		vm->paging->name, opt_guest_2m ? "true" : "false", vm->backing->name,
		opt_thp ? "true" : "false");
	fprintf(f, " \"pages_per_vcpu\": %d, \"page_size\": %llu,\n", opt_pages,
		(unsigned long long)PAGE_SIZE);
	fprintf(f, " \"memslots\": [\n");
	for (int i = 0, n = 0; i < vm->nr_slots; i++) {
		struct memslot *ms = &vm->slots[i];

		if (ms->deleted)
			continue;
		fprintf(f, "%s  {\"slot\": %d, \"as_id\": %d, \"gpa\": %llu, \"size\": %llu, "
			"\"hva\": %llu, \"flags\": %u, \"backing\": \"%s\"}",
			n++ ? ",\n" : "", ms->slot, ms->as_id, (unsigned long long)ms->gpa,
			(unsigned long long)ms->size, (unsigned long long)(uintptr_t)ms->hva,
			ms->flags, ms->backing);
	}
	fprintf(f, "\n");
	fprintf(f, " ],\n \"cr3\": %llu,\n \"first_cr3\": %llu,\n \"guest_pt_pages\": [",
		(unsigned long long)vm->cr3, (unsigned long long)vm->first_cr3);
	for (int i = 0; i < vm->nr_pt_pages; i++)
		fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)vm->pt_pages[i]);
	fprintf(f, "],\n \"guest_maps\": [");
	write_xruns(f, vm->guest_maps, vm->nr_guest_maps);
	fprintf(f, "],\n \"host_runs\": [");
	write_xruns(f, vm->host_runs, vm->nr_host_runs);
	fprintf(f, "],\n \"vm_stats\": %s,\n \"vcpu_state\": [\n", vm->stats);
	for (int v = 0; v < NR_VCPUS; v++) {
		struct vcpu *vc = &vm->vcpus[v];

		fprintf(f, "  {\"id\": %d, \"tid\": %d, \"comm\": \"l2vmm-vcpu%d\", \"cpu\": %d, "
			"\"exit_reason\": %u, \"mp_state\": %u, \"cr0\": %llu, \"cr3\": %llu, "
			"\"cr4\": %llu, \"efer\": %llu, \"rip\": %llu,\n   \"stats\": %s}%s\n",
			vc->id, vc->tid, vc->id, vc->cpu, vc->exit_reason, vc->mp_state.mp_state,
			(unsigned long long)vc->sregs.cr0, (unsigned long long)vc->sregs.cr3,
			(unsigned long long)vc->sregs.cr4, (unsigned long long)vc->sregs.efer,
			(unsigned long long)vc->regs.rip, vc->stats, v + 1 < NR_VCPUS ? "," : "");
	}
	fprintf(f, " ],\n \"made_up_linux\": {\"note_gpa\": %llu, \"osrelease\": \"%s\", "
		"\"reads\": [[%llu, %llu, %llu], [%llu, %llu, %llu]]},\n",
		(unsigned long long)FAKE_NOTE_GPA, FAKE_OSRELEASE,
		(unsigned long long)vm->fake_kva[0], (unsigned long long)vm->fake_gpa[0],
		(unsigned long long)vm->fake_tag[0], (unsigned long long)vm->fake_kva[1],
		(unsigned long long)vm->fake_gpa[1], (unsigned long long)vm->fake_tag[1]);
	/* "pages": the tagged pages as the guest left them; "host_changes":
	 * the ones --host-changes changed afterwards ("pfn": before the change) */
	for (int changed = 0; changed < 2; changed++) {
		fprintf(f, "%s", changed ? ",\n \"host_changes\": [\n" : " \"pages\": [\n");
		for (int p = 0, n = 0; p < vm->nr_pages; p++) {
			struct tagged_page *tp = &vm->pages[p];

			if ((tp->change != HC_NONE) != changed)
				continue;
			fprintf(f, "%s  {\"vcpu\": %d, \"index\": %d, \"gva\": %llu, \"gpa\": %llu, "
				"\"hva\": %llu, \"pfn\": %llu, \"tag\": %llu, \"slot\": %d, "
				"\"host_thp\": %s",
				n++ ? ",\n" : "", tp->vcpu, tp->index, (unsigned long long)tp->gva,
				(unsigned long long)tp->gpa, (unsigned long long)tp->hva,
				(unsigned long long)tp->pfn, (unsigned long long)tp->tag, tp->slot,
				tp->host_thp < 0 ? "null" : tp->host_thp ? "true" : "false");
			if (changed) {
				fprintf(f, ", \"change\": \"%s\", \"host_present\": %s, \"new_gpa\": ",
					host_change_names[tp->change],
					tp->host_present ? "true" : "false");
				if (tp->change == HC_MOVED)
					fprintf(f, "%llu", (unsigned long long)tp->new_gpa);
				else
					fputs("null", f);
			}
			fprintf(f, "}");
		}
		fprintf(f, "\n ]");
	}
	fprintf(f, "}\n");

	if (fflush(f) != 0 || ferror(f))
		die("write %s failed: %s", tmp, strerror(errno));
	if (fsync(fd) < 0)
		die("fsync %s failed: %s", tmp, strerror(errno));
	if (fclose(f) != 0)
		die("close %s failed: %s", tmp, strerror(errno));
	if (rename(tmp, opt_truth) < 0)
		die("rename %s -> %s failed: %s", tmp, opt_truth, strerror(errno));
	free(tmp);
}

/* ------------------------------------------------------------------ */
/* main                                                                */
/* ------------------------------------------------------------------ */
static void on_signal(int sig)
{
	stop_signal = sig;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: l2vmm --truth FILE [options]\n"
		"  --truth FILE         write ground-truth JSON to FILE (atomically)\n"
		"  --stop-file FILE     exit 0 once FILE exists (polled every 100 ms)\n"
		"  --timeout SECONDS    exit 3 after SECONDS from start (default 600, 0 = never)\n"
		"  --pages N            data pages per vCPU, 1..%d (default 64)\n"
		"  --thp                madvise(MADV_HUGEPAGE) on slot 1 (default MADV_NOHUGEPAGE)\n"
		"  --guest-paging MODE  guest paging mode: 64 (default, long mode), pae\n"
		"                       (32-bit PAE paging) or 32 (32-bit 2-level paging)\n"
		"  --guest-2m           map the data pages with guest 2 MiB pages (64, pae)\n"
		"  --backing KIND       guest memory backing: anon (default) or hugetlb1g\n"
		"                       (slot 1 = 1 GiB MAP_HUGETLB|MAP_HUGE_1GB page)\n"
		"  --switch-cr3         (64 only) start on a copy of the top-level table, write\n"
		"                       the tags, load the real CR3 and write them again\n"
		"  --host-changes       (64, anon, 4K pages only) change the guest's memory on\n"
		"                       the host after the guest wrote its tags: move one\n"
		"                       memslot, delete another, make a page read-only and run\n"
		"                       the guest again (it reads that page, writes the rest),\n"
		"                       then MADV_DONTNEED one page and make another read-only;\n"
		"                       the changed pages are listed in \"host_changes\"\n"
		"  --churn-log FILE     (64, anon, no --host-changes) after READY, run the guest\n"
		"                       over and over while the host keeps changing slot 1\n"
		"                       (MADV_DONTNEED, mprotect, memslot deleted\n"
		"                       and added); every change and every PFN seen in\n"
		"                       pagemap go to FILE as JSON lines\n"
		"  --churn-ksm          with --churn-log: KSM merging and unmerging in the cycle\n"
		"                       too\n"
		"  --churn-collapse     with --churn-log: MADV_COLLAPSE of slot 1 in the cycle\n"
		"                       too (L2 and L1 crashed with it: see l2vmm-notes.md)\n"
		"  --prefault-mib N     add slot 2 (N MiB of 4K anon pages at GPA 4 GiB), write\n"
		"                       every page, then map all of it into KVM's TDP tables\n"
		"                       with KVM_PRE_FAULT_MEMORY (Linux 6.10+, TDP only): a\n"
		"                       large table for benchmarks; not in host_runs\n"
		"  -v, --verbose        progress messages on stderr\n"
		"  -h, --help           this help\n"
		"exit codes: 0 stopped after READY, 1 error, 2 usage, 3 timeout\n",
		MAX_PAGES_PER_VCPU);
}

static void parse_args(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "truth", required_argument, NULL, 't' },
		{ "stop-file", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "pages", required_argument, NULL, 'n' },
		{ "thp", no_argument, NULL, 'H' },
		{ "guest-paging", required_argument, NULL, 'g' },
		{ "backing", required_argument, NULL, 'b' },
		{ "guest-2m", no_argument, NULL, 'M' },
		{ "prefault-mib", required_argument, NULL, 'P' },
		{ "switch-cr3", no_argument, NULL, 'C' },
		{ "host-changes", no_argument, NULL, 'X' },
		{ "churn-log", required_argument, NULL, 'L' },
		{ "churn-ksm", no_argument, NULL, 'K' },
		{ "churn-collapse", no_argument, NULL, 'Q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	char *end;

	while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (c) {
		case 't': opt_truth = optarg; break;
		case 's': opt_stop_file = optarg; break;
		case 'T':
			errno = 0;
			opt_timeout = strtol(optarg, &end, 0);
			if (errno || *end || opt_timeout < 0) {
				fprintf(stderr, "l2vmm: bad --timeout '%s'\n", optarg);
				exit(EXIT_USAGE);
			}
			break;
		case 'n': {
			long n;

			errno = 0;
			n = strtol(optarg, &end, 0);
			if (errno || *end || n < 1 || n > MAX_PAGES_PER_VCPU ||
			    n * NR_VCPUS > (long)SLOT1_PAGES) {
				fprintf(stderr, "l2vmm: bad --pages '%s' (1..%d)\n", optarg,
					MAX_PAGES_PER_VCPU);
				exit(EXIT_USAGE);
			}
			opt_pages = (int)n;
			break;
		}
		case 'H': opt_thp = true; break;
		case 'g': opt_paging = optarg; break;
		case 'b': opt_backing = optarg; break;
		case 'M': opt_guest_2m = true; break;
		case 'C': opt_switch_cr3 = true; break;
		case 'X': opt_host_changes = true; break;
		case 'L': opt_churn_log = optarg; break;
		case 'K': opt_churn_ksm = true; break;
		case 'Q': opt_churn_collapse = true; break;
		case 'P':
			errno = 0;
			opt_prefault_mib = strtol(optarg, &end, 0);
			if (errno || *end || opt_prefault_mib < 2 || opt_prefault_mib % 2 ||
			    opt_prefault_mib > 64 * 1024) {
				fprintf(stderr, "l2vmm: bad --prefault-mib '%s' (an even number, "
					"2..65536)\n", optarg);
				exit(EXIT_USAGE);
			}
			break;
		case 'v': opt_verbose = true; break;
		case 'h': usage(stdout); exit(EXIT_OK);
		default: usage(stderr); exit(EXIT_USAGE);
		}
	}
	if (optind != argc) {
		fprintf(stderr, "l2vmm: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		exit(EXIT_USAGE);
	}
	if (!opt_truth) {
		fprintf(stderr, "l2vmm: --truth FILE is required\n");
		usage(stderr);
		exit(EXIT_USAGE);
	}
	if (opt_stop_file && access(opt_stop_file, F_OK) == 0) {
		fprintf(stderr, "l2vmm: stop file '%s' already exists; remove it first\n",
			opt_stop_file);
		exit(EXIT_USAGE);
	}
}

/* Wait until every vCPU has halted ``runs`` times. */
static void wait_halted(struct vm *vm, int runs)
{
	for (;;) {
		int done = 0;

		for (int v = 0; v < NR_VCPUS; v++)
			done += __atomic_load_n(&vm->vcpus[v].halted, __ATOMIC_ACQUIRE) >= runs;
		if (done == NR_VCPUS)
			return;
		if (stop_signal) {
			fprintf(stderr, "l2vmm: error: signal %d before the guest halted\n",
				(int)stop_signal);
			exit(EXIT_ERR);
		}
		check_timeout("while waiting for the vCPUs to halt");
		usleep(10000);
	}
}

int main(int argc, char **argv)
{
	static struct vm vm;
	struct kvm_cpuid2 *cpuid;
	struct sigaction sa;
	sigset_t set;
	size_t i;

	clock_gettime(CLOCK_MONOTONIC, &start_ts);
	parse_args(argc, argv);

	for (i = 0; i < sizeof(paging_modes) / sizeof(paging_modes[0]); i++)
		if (!strcmp(paging_modes[i].name, opt_paging))
			vm.paging = &paging_modes[i];
	if (!vm.paging) {
		fprintf(stderr, "l2vmm: unsupported --guest-paging '%s' (supported: 64, pae, 32)\n",
			opt_paging);
		exit(EXIT_USAGE);
	}
	if (opt_guest_2m && !vm.paging->map_2m) {
		fprintf(stderr, "l2vmm: --guest-2m is not supported with --guest-paging %s "
			"(its large pages are 4 MiB)\n", vm.paging->name);
		exit(EXIT_USAGE);
	}
	if (opt_switch_cr3 && vm.paging->code != guest_code) {
		fprintf(stderr, "l2vmm: --switch-cr3 needs --guest-paging 64\n");
		exit(EXIT_USAGE);
	}
	for (i = 0; i < sizeof(backings) / sizeof(backings[0]); i++)
		if (!strcmp(backings[i].name, opt_backing))
			vm.backing = &backings[i];
	if (!vm.backing) {
		fprintf(stderr, "l2vmm: unsupported --backing '%s' (supported: anon, hugetlb1g)\n",
			opt_backing);
		exit(EXIT_USAGE);
	}
	if (opt_thp && strcmp(vm.backing->name, "anon")) {
		fprintf(stderr, "l2vmm: --thp needs --backing anon\n");
		exit(EXIT_USAGE);
	}
	if (opt_host_changes &&
	    (vm.paging->code != guest_code || strcmp(vm.backing->name, "anon") || opt_thp ||
	     opt_guest_2m || opt_pages < 3 ||
	     opt_pages + HC_SLOT3_PAGES + HC_SLOT4_PAGES > MAX_PAGES_PER_VCPU)) {
		fprintf(stderr, "l2vmm: --host-changes needs --guest-paging 64, --backing anon, "
			"4K pages (no --thp, --guest-2m) and --pages 3..%d\n",
			MAX_PAGES_PER_VCPU - HC_SLOT3_PAGES - HC_SLOT4_PAGES);
		exit(EXIT_USAGE);
	}

	if (opt_churn_log &&
	    (vm.paging->code != guest_code || strcmp(vm.backing->name, "anon") || opt_host_changes ||
	     opt_guest_2m || opt_prefault_mib || opt_switch_cr3)) {
		fprintf(stderr, "l2vmm: --churn-log needs --guest-paging 64, --backing anon, "
			"4K guest pages, and no --host-changes, --prefault-mib or --switch-cr3\n");
		exit(EXIT_USAGE);
	}

	/* Signals: handled only by the main thread; vCPU threads block them. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	open_kvm(&vm);
	add_memslot(&vm, 0, SLOT0_GPA, SLOT0_SIZE, false);
	add_memslot(&vm, 1, SLOT1_GPA, vm.backing->slot1_size, true);
	if (opt_prefault_mib)
		add_prefault_slot(&vm);
	if (opt_host_changes) {
		add_memslot(&vm, 3, SLOT3_GPA, HC_SLOT_SIZE, false);
		add_memslot(&vm, 4, SLOT4_GPA, HC_SLOT_SIZE, false);
	}
	build_guest(&vm);

	cpuid = get_supported_cpuid(&vm);
	for (int v = 0; v < NR_VCPUS; v++)
		setup_vcpu(&vm, v, cpuid);
	free(cpuid);

	for (int v = 0; v < NR_VCPUS; v++) {
		int err = pthread_create(&vm.vcpus[v].thread, NULL, vcpu_thread, &vm.vcpus[v]);

		if (err)
			die("pthread_create for vCPU %d failed: %s", v, strerror(err));
	}
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	wait_halted(&vm, 1);
	if (opt_host_changes) {
		host_changes_before(&vm);
		second_tag_tables(&vm);
		__atomic_store_n(&vm.second_run, 1, __ATOMIC_RELEASE);
		wait_halted(&vm, 2);
	}
	for (int v = 0; v < NR_VCPUS; v++) {
		if (vm.vcpus[v].sregs.cr3 != vm.cr3)
			die("vCPU %d halted with CR3 0x%llx, not 0x%llx", v,
			    (unsigned long long)vm.vcpus[v].sregs.cr3, (unsigned long long)vm.cr3);
	}
	vlog("guest done after %.2f s", elapsed());

	verify_pages(&vm);
	if (opt_host_changes)
		host_changes_after(&vm);
	record_host_runs(&vm);
	if (opt_prefault_mib)
		prefault_slot(&vm);
	vm.stats = read_stats_json(vm.vm_fd);
	write_truth(&vm);
	if (opt_churn_log)
		churn_start(&vm);
	printf("L2VMM READY pid=%d truth=%s\n", (int)getpid(), opt_truth);
	fflush(stdout);

	/* Keep the VM (and vCPU fds) alive until told to stop. */
	for (;;) {
		if (stop_signal) {
			vlog("signal %d, exiting", (int)stop_signal);
			if (opt_churn_log)
				churn_stop(&vm);
			return EXIT_OK;
		}
		if (opt_stop_file && access(opt_stop_file, F_OK) == 0) {
			vlog("stop file %s exists, exiting", opt_stop_file);
			if (opt_churn_log)
				churn_stop(&vm);
			return EXIT_OK;
		}
		check_timeout("while holding the VM");
		usleep(100000);
	}
}
