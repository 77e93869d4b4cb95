# stream - PVH guest for save/restore benchmarks: prints "virtkit-guest: stream 0",
# "virtkit-guest: stream 1", ... (decimal) as fast as it can, forever, and touches nothing but
# COM1's transmit register (no port reads, no ACPI, no timer), so it runs the same on every
# VMM (Firecracker and QEMU's microvm have no ACPI PM block at 0x600, where flood.s polls).
# A restored copy prints its next bytes within microseconds of its first instruction: the time
# to its first output after a restore is the VMM's, not a tick interval. Like flood.s it writes
# the transmit register without polling LSR (a UART that is always ready loses nothing) and
# keeps the number as ASCII digits, incremented in place. Never ends by itself.
    .include "pvh.inc"

    .set DIGITS_MAX, 16

    .text
main:
line:
    movw    $COM1_THR, %dx
    movl    $stream_msg, %esi
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
    jbe     line
    movb    $'0', (%edi)
    decl    %edi
    cmpl    $digits, %edi
    jae     4b
    # Every digit carried (9...9 + 1): the number gets one digit longer, 10...0.
    cmpl    $DIGITS_MAX, %ecx
    jae     line                    # 10^16 lines: never in practice; it wraps to 0...0
    movb    $'0', digits(%ecx)
    movb    $'1', digits
    incl    digits_len
    jmp     line

    .data
digits:     .ascii "0"
            .space DIGITS_MAX - 1
digits_len: .long 1

    .section .rodata
stream_msg: .asciz "virtkit-guest: stream "
