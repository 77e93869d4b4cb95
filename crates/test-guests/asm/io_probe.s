# io_probe - PVH guest that exercises port I/O and MMIO exits, in this order:
#   outl 0x12345678 -> port 0x700
#   inl  port 0x700                  prints "pio-read=<8 hex digits>"
#   movl 0xcafebabe -> [0xd0000000]  (4-byte MMIO write)
#   movl [0xd0000004]                prints "mmio-read=<8 hex digits>"
#   outb 0x5a -> port 0x701
#   outw 0xbeef -> port 0x702
# then prints "io-probe done" and powers off (ACPI S5; cli; hlt forever if that returns).
# Hex digits are lowercase.
    .include "pvh.inc"

    .set PROBE_PORT, 0x700
    .set PROBE_MMIO, 0xd0000000

    .text
main:
    movw    $PROBE_PORT, %dx
    movl    $0x12345678, %eax
    outl    %eax, %dx
    inl     %dx, %eax
    movl    $pio_msg, %esi
    call    puts
    call    put_hex32
    movb    $'\n', %al
    call    putc

    movl    $0xcafebabe, PROBE_MMIO
    movl    PROBE_MMIO + 4, %eax
    movl    $mmio_msg, %esi
    call    puts
    call    put_hex32
    movb    $'\n', %al
    call    putc

    movw    $PROBE_PORT + 1, %dx
    movb    $0x5a, %al
    outb    %al, %dx
    movw    $PROBE_PORT + 2, %dx
    movw    $0xbeef, %ax
    outw    %ax, %dx

    movl    $done_msg, %esi
    call    puts
    jmp     power_off

    .section .rodata
pio_msg:    .asciz "pio-read="
mmio_msg:   .asciz "mmio-read="
done_msg:   .asciz "io-probe done\n"
