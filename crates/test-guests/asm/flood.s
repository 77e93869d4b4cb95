# flood - PVH guest for console back-pressure tests: prints "virtkit-guest: flood 0",
# "virtkit-guest: flood 1", ... (decimal) as fast as it can, forever, so that every buffer
# between the guest and a console client fills within seconds. It writes the transmit register
# without polling LSR (one port exit per byte, half of putc's): a UART that is always ready
# (virtkit's, QEMU's) loses nothing. The number is kept as ASCII digits and incremented in place.
# Between lines it checks PM1_STS bit 8 (PWRBTN_STS, enabled first as in power_button.s): when
# set it clears it, prints "virtkit-guest: flood power button" and powers off, so a clean stop
# works mid-flood.
    .include "pvh.inc"

    .set DIGITS_MAX, 16

    .text
main:
    ACPI_POWER_BUTTON_ENABLE
line:
    movw    $COM1_THR, %dx
    movl    $flood_msg, %esi
1:  lodsb
    testb   %al, %al
    jz      2f
    outb    %al, %dx
    jmp     1b
2:  movl    $digits, %esi
    movl    digits_len, %ecx
3:  lodsb
    outb    %al, %dx
    loop    3b
    movb    $'\n', %al
    outb    %al, %dx

    # digits += 1, from the last digit, carrying.
    movl    digits_len, %ecx
    leal    digits-1(%ecx), %edi
4:  incb    (%edi)
    cmpb    $'9', (%edi)
    jbe     5f
    movb    $'0', (%edi)
    decl    %edi
    cmpl    $digits, %edi
    jae     4b
    # Every digit carried (9...9 + 1): the number gets one digit longer, 10...0.
    cmpl    $DIGITS_MAX, %ecx
    jae     5f                      # 10^16 lines: never in practice; it wraps to 0...0
    movb    $'0', digits(%ecx)
    movb    $'1', digits
    incl    digits_len

5:  movw    $PM1_STS, %dx
    inw     %dx, %ax
    testw   $PM1_PWRBTN, %ax
    jz      line
    movw    $PM1_PWRBTN, %ax        # write 1 to clear
    outw    %ax, %dx
    movl    $pressed, %esi
    call    puts
    jmp     power_off

    .data
digits:     .ascii "0"
            .space DIGITS_MAX - 1
digits_len: .long 1

    .section .rodata
flood_msg:  .asciz "virtkit-guest: flood "
pressed:    .asciz "virtkit-guest: flood power button\n"
