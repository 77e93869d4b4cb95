# mbr_mouse - MBR program for pointer tests: the BIOS's PS/2 pointing-device services (int 15h
# AX=C205h initialise with 3-byte packets, C207h set the packet handler, C200h enable), which
# SeaBIOS drives through the i8042's auxiliary port and feeds from IRQ 12. Prints
#       mouse: ready
# then, for every packet the BIOS hands the handler,
#       mouse: status=SS x=XX y=YY
# (the packet's three bytes in hex: buttons and sign bits, X, Y; Y grows upwards). A service
# that fails prints `mouse: error=AH function=C2xx` and the program powers off. Runs until the
# VM stops.
    .include "mbr.inc"

main:
    movb    $0x05, %cl              # %cl: the function, for `fail`
    movw    $0xc205, %ax            # initialise: reset the mouse, 3-byte packets
    movb    $3, %bh
    int     $0x15
    jc      fail
    movb    $0x07, %cl
    movw    $handler, %bx           # ES:BX = the handler (ES = 0)
    movw    $0xc207, %ax
    int     $0x15
    jc      fail
    movb    $0x00, %cl
    movw    $0xc200, %ax            # enable
    movb    $1, %bh
    int     $0x15
    jc      fail
    movw    $s_ready, %si
    call    puts
1:  sti
    hlt                             # packets come by IRQ 12, printed by the handler
    jmp     1b

fail:
    movw    $s_error, %si
    call    puts
    movb    %ah, %al
    call    put_hex8
    movw    $s_function, %si
    call    puts
    movb    %cl, %al
    call    put_hex8
    movb    $'\n', %al
    call    putc
    jmp     power_off

# The packet handler, called far by the BIOS with the status, X, Y and Z words on the stack
# (pushed in that order).
handler:
    pushw   %bp
    movw    %sp, %bp
    pushw   %ds
    pushw   %ax
    pushw   %si
    xorw    %ax, %ax
    movw    %ax, %ds
    movw    $s_status, %si
    call    puts
    movb    12(%bp), %al            # status (bp+2: IP, +4: CS, +6: Z, +8: Y, +10: X, +12)
    call    put_hex8
    movw    $s_x, %si
    call    puts
    movb    10(%bp), %al
    call    put_hex8
    movw    $s_y, %si
    call    puts
    movb    8(%bp), %al
    call    put_hex8
    movb    $'\n', %al
    call    putc
    popw    %si
    popw    %ax
    popw    %ds
    popw    %bp
    lret

s_ready:    .asciz "mouse: ready\n"
s_error:    .asciz "mouse: error="
s_function: .asciz " function=c2"
s_status:   .asciz "mouse: status="
s_x:        .asciz " x="
s_y:        .asciz " y="

    MBR_END
