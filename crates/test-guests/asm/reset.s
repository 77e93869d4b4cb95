# reset - PVH guest: prints "virtkit-guest: resetting", then 0xfe to port 0x64 (i8042 reset).
# If the reset does not happen: cli; hlt forever.
    .include "pvh.inc"

    .text
main:
    movl    $msg, %esi
    call    puts
    jmp     reset_i8042

    .section .rodata
msg:    .asciz "virtkit-guest: resetting\n"
