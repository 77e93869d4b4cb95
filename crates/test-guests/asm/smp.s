# smp - PVH guest that brings up the other vCPUs with INIT-SIPI-SIPI.
#
# BSP: prints "cpu apic=<id> bsp" (id = LAPIC ID register bits 31:24, decimal), reads the CPU
# count N from CPUID.1:EBX[23:16] (0 counts as 1). If N > 1: copies the real-mode trampoline
# to 0x8000, software-enables its LAPIC (SVR), sends INIT to all-excluding-self (ICR shorthand
# 11b), waits 40,000,000 TSC cycles (>= 10 ms up to a 4 GHz TSC), then SIPI vector 0x08 twice
# (1,000,000 cycles apart). It waits for N-1 APs to check in, at most 0x5_0000_0000 TSC cycles
# (~10 s at 2.1 GHz, ~5 s at 4 GHz); then prints "cpus-up=<N>". On timeout it prints
# "smp timeout" and then "cpus-up=<1 + APs that checked in>". Then ACPI power-off (cli; hlt
# forever if that returns).
#
# Each AP: real mode at 0x8000 -> loads the GDT, enters 32-bit protected mode, takes a stack
# from an atomic counter, takes the print spinlock, prints "cpu apic=<id> ap", increments the
# arrived counter, releases the lock, then cli; hlt forever.
#
# All lines are printed under the spinlock, so they never interleave. The APs' lines come in
# the order they take the lock, not by APIC ID.
    .include "pvh.inc"

    .set TRAMPOLINE_ADDR,   0x8000          # SIPI vector 0x08 -> CS=0x0800, IP=0
    .set SIPI_VECTOR,       TRAMPOLINE_ADDR >> 12
    .set ICR_ALL_BUT_SELF,  3 << 18
    .set ICR_LEVEL_ASSERT,  1 << 14
    .set ICR_BUSY,          1 << 12
    .set ICR_INIT,          5 << 8
    .set ICR_STARTUP,       6 << 8
    .set INIT_DELAY,        40000000        # >= 10 ms up to a 4 GHz TSC
    .set SIPI_DELAY,        1000000         # >= 200 us up to a 5 GHz TSC
    .set TIMEOUT_HI,        5               # timeout = 0x5_0000_0000 TSC cycles
    .set MAX_APS,           255
    .set AP_STACK_SIZE,     1024

    .text
main:
    call    lock_acquire
    movl    $cpu_msg, %esi
    call    puts
    call    lapic_id
    call    put_dec32
    movl    $bsp_msg, %esi
    call    puts
    call    lock_release

    movl    $1, %eax
    cpuid
    shrl    $16, %ebx
    andl    $0xff, %ebx
    jnz     1f
    movl    $1, %ebx                # CPUID.1:EBX[23:16] == 0: a single CPU
1:  movl    %ebx, cpu_count
    cmpl    $1, %ebx
    je      report

    # Copy the trampoline below 1 MiB, where a SIPI can start it.
    movl    $ap_trampoline, %esi
    movl    $TRAMPOLINE_ADDR, %edi
    movl    $ap_trampoline_end - ap_trampoline, %ecx
    rep movsb

    # Software-enable the local APIC (spurious vector 0xff), as firmware would.
    movl    LAPIC_SVR, %eax
    orl     $0x1ff, %eax
    movl    %eax, LAPIC_SVR

    movl    $ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_INIT, %eax
    call    send_ipi
    movl    $INIT_DELAY, %ecx
    call    tsc_delay
    movl    $ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_STARTUP | SIPI_VECTOR, %eax
    call    send_ipi
    movl    $SIPI_DELAY, %ecx
    call    tsc_delay
    movl    $ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_STARTUP | SIPI_VECTOR, %eax
    call    send_ipi

    # Wait for cpu_count - 1 APs, with a timeout.
    movl    cpu_count, %ebx
    decl    %ebx
    rdtsc
    movl    %eax, %esi
    movl    %edx, %edi
2:  cmpl    %ebx, ap_arrived
    jae     report
    pause
    rdtsc
    subl    %esi, %eax
    sbbl    %edi, %edx
    cmpl    $TIMEOUT_HI, %edx
    jb      2b
    call    lock_acquire
    movl    $timeout_msg, %esi
    call    puts
    call    lock_release

report:
    call    lock_acquire
    movl    $cpus_up_msg, %esi
    call    puts
    movl    ap_arrived, %eax
    incl    %eax                    # the BSP
    call    put_dec32
    movb    $'\n', %al
    call    putc
    call    lock_release
    jmp     power_off

# %eax = ICR low word; ICR high (destination) is 0, unused with a shorthand.
send_ipi:
    movl    $0, LAPIC_ICR_HIGH
    movl    %eax, LAPIC_ICR_LOW
1:  testl   $ICR_BUSY, LAPIC_ICR_LOW
    jz      2f
    pause
    jmp     1b
2:  ret

lock_acquire:
    pushl   %eax
1:  movl    $1, %eax
    xchgl   %eax, print_lock        # xchg with memory is locked
    testl   %eax, %eax
    jz      3f
2:  pause
    cmpl    $0, print_lock
    jne     2b
    jmp     1b
3:  popl    %eax
    ret

lock_release:
    movl    $0, print_lock          # a plain store releases on x86
    ret

# 32-bit AP entry, reached from the trampoline with CS = SEL_CODE32.
ap_entry32:
    movl    $SEL_DATA32, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    movl    %eax, %fs
    movl    %eax, %gs
    movl    $1, %eax
    lock xaddl %eax, ap_next_index  # %eax = this AP's index
    cmpl    $MAX_APS, %eax
    jae     halt_forever            # no stack left for it
    incl    %eax
    imull   $AP_STACK_SIZE, %eax
    addl    $ap_stacks, %eax
    movl    %eax, %esp

    call    lock_acquire
    movl    $cpu_msg, %esi
    call    puts
    call    lapic_id
    call    put_dec32
    movl    $ap_msg, %esi
    call    puts
    lock incl ap_arrived
    call    lock_release
    jmp     halt_forever

# Real-mode trampoline, copied to TRAMPOLINE_ADDR. Position-dependent only through offsets
# from its start (CS = TRAMPOLINE_ADDR >> 4, IP = 0 after the SIPI).
    .set TRAMP_GDT_DESC_OFF, ap_tramp_gdt_desc - ap_trampoline
    .p2align 4
ap_trampoline:
    .code16
    cli
    cld
    lgdtl   %cs:TRAMP_GDT_DESC_OFF  # 32-bit base: the image's GDT above 1 MiB
    movl    %cr0, %eax
    orl     $1, %eax                # CR0.PE
    movl    %eax, %cr0
    ljmpl   $SEL_CODE32, $ap_entry32
    .p2align 2
    .word   0
ap_tramp_gdt_desc:
    .word   gdt_end - gdt - 1
    .long   gdt
ap_trampoline_end:
    .code32

    .section .rodata
cpu_msg:        .asciz "cpu apic="
bsp_msg:        .asciz " bsp\n"
ap_msg:         .asciz " ap\n"
cpus_up_msg:    .asciz "cpus-up="
timeout_msg:    .asciz "smp timeout\n"

    .data
    .p2align 2
cpu_count:      .long 1
print_lock:     .long 0
ap_next_index:  .long 0
ap_arrived:     .long 0

    .bss
    .p2align 4
ap_stacks:
    .skip   MAX_APS * AP_STACK_SIZE
