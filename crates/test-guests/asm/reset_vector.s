# reset_vector - raw 64 KiB firmware image (ends at 4 GiB; mirrored at 0xf0000). The vCPU starts
# in 16-bit real mode at CS=0xf000 (base 0xffff0000), IP=0xfff0, which holds a near jmp to the
# code below. It prints "virtkit-guest: real mode at reset vector" on COM1, then ACPI power-off;
# if that returns, cli; hlt forever. It needs no RAM: no stack, data read through %cs, which
# still has the reset base 0xffff0000 (the near jmp does not reload it).
    .include "common.inc"

    .section .image, "ax"
    .code16

    .org    0xf000
start:
    cli
    cld
    SERIAL_INIT
    movw    $msg, %si
1:  movb    %cs:(%si), %al
    testb   %al, %al
    jz      2f
    SERIAL_PUTC_AL
    incw    %si
    jmp     1b
2:  ACPI_POWER_OFF
    HALT_FOREVER

msg:    .asciz "virtkit-guest: real mode at reset vector\n"

    .org    0xfff0                  # the reset vector: physical 0xfffffff0
reset_vector:
    jmp     start                   # near jmp (0xe9 rel16), within the same 64 KiB segment
    .org    0x10000, 0xf4           # pad the last 16 bytes with hlt; image is exactly 64 KiB
