# echo - PVH guest: prints "virtkit-guest: echo ready", then polls COM1 (LSR bit 0) and writes
# every byte it receives straight back, except 'q': on 'q' (not echoed) it prints
# "\nvirtkit-guest: echo done" and powers off (ACPI S5; cli; hlt forever if that returns).
    .include "pvh.inc"

    .text
main:
    movl    $ready, %esi
    call    puts
1:  SERIAL_GETC_AL
    cmpb    $'q', %al
    je      2f
    call    putc
    jmp     1b
2:  movl    $done, %esi
    call    puts
    jmp     power_off

    .section .rodata
ready:  .asciz "virtkit-guest: echo ready\n"
done:   .asciz "\nvirtkit-guest: echo done\n"
