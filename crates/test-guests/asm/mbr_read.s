# mbr_read - MBR program: reads known sectors of the boot disk with BIOS int 13h and prints the
# 32-bit sum of each sector's 128 little-endian dwords.
#
# For every LBA in `lbas` (1, 2, 1000, 2^21, 2^24 + 5, 2^25 - 1: the first sectors, 1 GiB,
# beyond 8 GiB, the last sector of a 16 GiB disk):
#   - an extended read (AH=42h) prints      ext lba=<decimal> sum=<8 hex digits>
#                                        or  ext lba=<decimal> error=<AH, 2 hex digits>
#   - if the LBA is inside the CHS geometry that AH=08h reports (cylinders x heads x sectors),
#     a CHS read (AH=02h) of the same sector prints the same with "chs" instead of "ext".
# Then "mbr-read done" and ACPI power-off.
    .include "mbr.inc"

main:
    movb    $0x08, %ah                  # get drive parameters
    movb    boot_drive, %dl
    int     $0x13
    jc      1f
    movb    %cl, %al
    andl    $0x3f, %eax                 # sectors per track
    jz      1f
    movl    %eax, chs_spt
    movzbl  %dh, %ebx
    incw    %bx                         # heads
    mull    %ebx
    movl    %eax, chs_hpc
    xchgb   %ch, %cl                    # cylinders: CL[7:6] are bits 9:8, CH bits 7:0
    shrb    $6, %ch
    movzwl  %cx, %eax
    incl    %eax
    movl    %eax, chs_cyls
1:
    movw    $lbas, %bp
next:
    movl    0(%bp), %eax
    movl    %eax, dap_lba
    movw    $1, dap_count
    movb    $0x42, %ah
    call    int13_dap
    movw    $s_ext, %si
    call    report

    movl    0(%bp), %eax                # LBA -> cylinder, head, sector
    xorl    %edx, %edx
    divl    chs_hpc
    cmpl    chs_cyls, %eax
    jae     2f
    movl    %eax, %ebx                  # cylinder
    movl    %edx, %eax
    xorl    %edx, %edx
    divl    chs_spt                     # %eax = head, %edx = sector - 1
    incw    %dx
    movb    %dl, %cl                    # sector (1-based)
    shlb    $6, %bh
    orb     %bh, %cl
    movb    %bl, %ch
    movb    %al, %dh
    movb    boot_drive, %dl
    movw    $SECTOR_BUF, %bx
    movw    $0x0201, %ax                # read 1 sector (CHS)
    int     $0x13
    movw    $s_chs, %si
    call    report
2:  addw    $4, %bp
    cmpw    $lbas_end, %bp
    jb      next

    movw    $s_done, %si
    call    puts
    jmp     power_off

# Prints "<%si>lba=<LBA at %bp> " then "sum=<hex>" of SECTOR_BUF, or "error=<AH>" if CF is set.
report:
    pushfw
    pushw   %ax
    call    puts
    movl    0(%bp), %eax
    call    put_dec32
    popw    %ax
    popfw
    jc      1f
    movw    $s_sum, %si
    call    puts
    movw    $SECTOR_BUF, %si
    movw    $SECTOR_SIZE / 4, %cx
    xorl    %ebx, %ebx
3:  lodsl
    addl    %eax, %ebx
    loop    3b
    movl    %ebx, %eax
    call    put_hex32
    jmp     2f
1:  movw    $s_error, %si
    call    puts
    movb    %ah, %al
    call    put_hex8
2:  movb    $'\n', %al
    jmp     putc

# Geometry from AH=08h; without it no LBA is below chs_cyls, so no CHS reads.
chs_cyls:   .long   0                   # cylinders the BIOS reports
chs_hpc:    .long   1                   # heads x sectors per track
chs_spt:    .long   1                   # sectors per track
lbas:   .long   1, 2, 1000, 1 << 21, (1 << 24) + 5, (1 << 25) - 1
lbas_end:
s_ext:      .asciz  "ext lba="
s_chs:      .asciz  "chs lba="
s_sum:      .asciz  " sum="
s_error:    .asciz  " error="
s_done:     .asciz  "mbr-read done\n"

    MBR_END
