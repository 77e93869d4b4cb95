# mbr_ticker - MBR program for display tests and the display benchmark: a screen that changes a
# little, steadily. Prints `ticker: ready` on COM1, then for ever: a counter of 5 decimal digits
# written with the BIOS's teletype output (int 10h AH=0Eh, which the VGA BIOS draws into the
# display's framebuffer) at the start of the current line, then waits about 20 ms (int 15h
# AH=86h). Each tick changes a few characters of one text row, nothing else.
    .include "mbr.inc"

main:
    movw    $s_ready, %si
    call    puts
    xorl    %ebp, %ebp              # the counter
1:  movb    $0x0e, %ah
    movb    $'\r', %al
    xorw    %bx, %bx
    int     $0x10
    movl    %ebp, %eax
    movl    $10000, %ecx            # 5 digits: 10^4, 10^3, ... 1
2:  xorl    %edx, %edx
    divl    %ecx                    # %eax = digit, %edx = rest
    pushl   %edx
    addb    $'0', %al
    movb    $0x0e, %ah
    xorw    %bx, %bx
    int     $0x10
    movl    %ecx, %eax              # next power of ten
    xorl    %edx, %edx
    movl    $10, %ecx
    divl    %ecx
    movl    %eax, %ecx
    popl    %eax
    testl   %ecx, %ecx
    jnz     2b
    incl    %ebp
    cmpl    $100000, %ebp
    jb      3f
    xorl    %ebp, %ebp
3:  movb    $0x86, %ah              # wait CX:DX microseconds: 20000
    xorw    %cx, %cx
    movw    $20000, %dx
    int     $0x15
    jmp     1b

s_ready: .asciz "ticker: ready\n"

    MBR_END
