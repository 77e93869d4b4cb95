# counter - PVH guest for pause/resume tests: prints "tick 0", "tick 1", ... (decimal) forever,
# one line every 40,000,000 TSC cycles (a fixed rdtsc delta, nothing calibrated: ~19 ms at a
# 2.1 GHz TSC, 20 ms at 2 GHz). Never ends by itself.
    .include "pvh.inc"

    .set TICK_CYCLES, 40000000

    .text
main:
    xorl    %ebx, %ebx
1:  movl    $tick_msg, %esi
    call    puts
    movl    %ebx, %eax
    call    put_dec32
    movb    $'\n', %al
    call    putc
    incl    %ebx
    movl    $TICK_CYCLES, %ecx
    call    tsc_delay
    jmp     1b

    .section .rodata
tick_msg:   .asciz "tick "
