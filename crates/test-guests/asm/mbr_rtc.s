# mbr_rtc - MBR program for the RTC's periodic interrupt: takes IRQ 8 itself (its own int 70h
# handler, IRQ 8 and the cascade unmasked at the PICs), sets status A to 1024 Hz and status B's
# PIE, and halts until its handler has run 64 times; each run reads status C (which answers the
# interrupt) and keeps what it held. Then PIE off and
#       rtc: periodic=64 status-c=c0
# (IRQF and PF) on COM1, and ACPI power-off. Without the interrupt it halts for ever.
    .include "mbr.inc"

    .set RTC_INDEX, 0x70
    .set RTC_DATA,  0x71
    .set IVT_70H,   0x70 * 4
    .set TICKS,     64

main:
    cli
    movw    $rtc_isr, IVT_70H
    movw    $0, IVT_70H + 2
    inb     $0xa1, %al              # slave PIC: unmask IRQ 8
    andb    $0xfe, %al
    outb    %al, $0xa1
    inb     $0x21, %al              # master PIC: unmask the cascade (IRQ 2)
    andb    $0xfb, %al
    outb    %al, $0x21
    movb    $0x0c, %al              # status C: a stale interrupt answered first
    outb    %al, $RTC_INDEX
    inb     $RTC_DATA, %al
    movb    $0x0a, %al              # status A: 32.768 kHz base, 1024 Hz
    outb    %al, $RTC_INDEX
    movb    $0x26, %al
    outb    %al, $RTC_DATA
    call    read_b
    orb     $0x40, %al              # PIE
    call    write_b
    sti
1:  hlt
    cmpw    $TICKS, ticks
    jb      1b
    cli
    call    read_b
    andb    $0xbf, %al
    call    write_b
    movw    $s_periodic, %si
    call    puts
    movzwl  ticks, %eax
    call    put_dec32
    movw    $s_status, %si
    call    puts
    movb    seen_c, %al
    call    put_hex8
    movb    $'\n', %al
    call    putc
    call    power_off

read_b:
    movb    $0x0b, %al
    outb    %al, $RTC_INDEX
    inb     $RTC_DATA, %al
    ret

write_b:                            # %al = status B
    movb    %al, %ah
    movb    $0x0b, %al
    outb    %al, $RTC_INDEX
    movb    %ah, %al
    outb    %al, $RTC_DATA
    ret

rtc_isr:
    pushw   %ax
    movb    $0x0c, %al              # status C: reading it answers the interrupt
    outb    %al, $RTC_INDEX
    inb     $RTC_DATA, %al
    orb     %al, %cs:seen_c
    incw    %cs:ticks
    movb    $0x20, %al              # EOI: slave, then master
    outb    %al, $0xa0
    outb    %al, $0x20
    popw    %ax
    iret

ticks:      .word 0
seen_c:     .byte 0
s_periodic: .asciz "rtc: periodic="
s_status:   .asciz " status-c="

    MBR_END
