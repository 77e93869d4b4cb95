# cmos_probe - PVH guest that writes and reads back CMOS RAM through the index/data port pair
# (0x70/0x71) 64 times, each through a different register of 0x40..0x47 with a different value:
#   outb reg -> 0x70; outb value -> 0x71; outb reg -> 0x70; inb 0x71, compared with value
# so that 128 index writes, 64 data writes and 64 data reads reach the CMOS, each data access
# right after its index write. Prints "cmos-probe mismatches=<8 hex digits>" (how many reads
# did not return the value written), then powers off (ACPI S5).
    .include "pvh.inc"

    .set CMOS_INDEX, 0x70
    .set CMOS_DATA, 0x71
    .set ROUNDS, 64

    .text
main:
    xorl    %ecx, %ecx              # round
    xorl    %edi, %edi              # mismatches
1:
    movl    %ecx, %ebx
    andl    $7, %ebx
    orl     $0x40, %ebx             # register 0x40 + round % 8
    movl    %ecx, %esi
    imull   $37, %esi
    addl    $11, %esi               # value: (round * 37 + 11) & 0xff
    movb    %bl, %al
    outb    %al, $CMOS_INDEX
    movl    %esi, %eax
    outb    %al, $CMOS_DATA
    movb    %bl, %al
    outb    %al, $CMOS_INDEX
    inb     $CMOS_DATA, %al
    movl    %esi, %edx
    cmpb    %dl, %al
    je      2f
    incl    %edi
2:
    incl    %ecx
    cmpl    $ROUNDS, %ecx
    jne     1b

    movl    $msg, %esi
    call    puts
    movl    %edi, %eax
    call    put_hex32
    movb    $'\n', %al
    call    putc
    jmp     power_off

    .section .rodata
msg:    .asciz "cmos-probe mismatches="
