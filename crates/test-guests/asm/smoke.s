# smoke - PVH guest for benchmarks: prints "virtkit-smoke: ready", then resets the machine
# through the i8042 (0xfe to port 0x64). If the reset does not happen (a machine without an
# i8042, e.g. QEMU's microvm), it triple-faults (IDT limit 0, then ud2), which also resets.
    .include "pvh.inc"

    .text
main:
    movl    $msg, %esi
    call    puts
    I8042_RESET_CPU
    lidt    empty_idt
    ud2
    jmp     halt_forever

    .section .rodata
msg:    .asciz "virtkit-smoke: ready\n"
    .p2align 2
    .word   0
empty_idt:
    .word   0                       # limit 0: every vector is outside the IDT
    .long   0
