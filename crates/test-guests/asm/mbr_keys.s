# mbr_keys - MBR program for keyboard tests: reads keys through the BIOS (int 16h AH=00h, which
# SeaBIOS fills from the PS/2 keyboard's IRQ 1) and echoes them on COM1. Prints
#       keys: ready
# then for every key its ASCII character (a key without one, such as a bare Shift, gives
# nothing: the BIOS keeps those to itself); Enter prints a line break and
#       keys: enter
# Runs until the VM stops.
    .include "mbr.inc"

main:
    movw    $s_ready, %si
    call    puts
1:  xorb    %ah, %ah
    int     $0x16                   # %al = ASCII, %ah = scancode
    cmpb    $0x0d, %al
    je      2f
    testb   %al, %al
    jz      1b
    call    putc
    jmp     1b
2:  movw    $s_enter, %si
    call    puts
    jmp     1b

s_ready: .asciz "keys: ready\n"
s_enter: .asciz "\nkeys: enter\n"

    MBR_END
