# hello - PVH guest: prints "virtkit-guest: hello from pvh", then ACPI power-off.
# If the power-off returns (no ACPI S5 on this machine): cli; hlt forever.
    .include "pvh.inc"

    .text
main:
    movl    $msg, %esi
    call    puts
    jmp     power_off

    .section .rodata
msg:    .asciz "virtkit-guest: hello from pvh\n"
