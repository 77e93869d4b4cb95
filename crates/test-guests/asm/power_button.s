# power_button - PVH guest: clears a stale PWRBTN_STS, sets PWRBTN_EN in PM1_EN (port 0x602),
# prints "virtkit-guest: waiting for power button", then polls PM1_STS (port 0x600) bit 8.
# When it is set, writes bit 8 back (write-1-to-clear), prints
# "virtkit-guest: power button pressed" and powers off (ACPI S5; cli; hlt forever if that
# returns).
    .include "pvh.inc"

    .text
main:
    ACPI_POWER_BUTTON_ENABLE

    movl    $waiting, %esi
    call    puts

    movw    $PM1_STS, %dx
1:  pause
    inw     %dx, %ax
    testw   $PM1_PWRBTN, %ax
    jz      1b
    movw    $PM1_PWRBTN, %ax
    outw    %ax, %dx

    movl    $pressed, %esi
    call    puts
    jmp     power_off

    .section .rodata
waiting:    .asciz "virtkit-guest: waiting for power button\n"
pressed:    .asciz "virtkit-guest: power button pressed\n"
