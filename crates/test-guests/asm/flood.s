# flood - PVH guest for console back-pressure tests: prints "virtkit-guest: flood 0",
# "virtkit-guest: flood 1", ... (decimal) as fast as COM1 takes them, forever, so that every
# buffer between the guest and a console client fills within seconds. Between lines it checks
# PM1_STS bit 8 (PWRBTN_STS, enabled first as in power_button.s): when set it clears it, prints
# "virtkit-guest: flood power button" and powers off, so a clean stop works mid-flood.
    .include "pvh.inc"

    .text
main:
    ACPI_POWER_BUTTON_ENABLE
    xorl    %ebx, %ebx
1:  movl    $flood_msg, %esi
    call    puts
    movl    %ebx, %eax
    call    put_dec32
    movb    $'\n', %al
    call    putc
    incl    %ebx
    movw    $PM1_STS, %dx
    inw     %dx, %ax
    testw   $PM1_PWRBTN, %ax
    jz      1b
    movw    $PM1_PWRBTN, %ax            # write 1 to clear
    outw    %ax, %dx
    movl    $pressed, %esi
    call    puts
    jmp     power_off

    .section .rodata
flood_msg:  .asciz "virtkit-guest: flood "
pressed:    .asciz "virtkit-guest: flood power button\n"
