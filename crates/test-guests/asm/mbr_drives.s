# mbr_drives - MBR program: asks the BIOS about hard disks 80h..83h with int 13h AH=48h (EDD
# get drive parameters) and prints, for each that answers,
#       drive <DL, 2 hex digits> sectors=<total sectors, 16 hex digits>
# then
#       drives=<how many answered>
#       bios-hd-count=<the BIOS data area's hard disk count, byte 0x475>
# then "mbr-drives done" and ACPI power-off.
    .include "mbr.inc"

    .set PARAMS,        SCRATCH         # the EDD result buffer
    .set PARAMS_SIZE,   0x1a            # EDD 1.x: size, flags, CHS, sectors (u64), bytes/sector
    .set BDA_HD_COUNT,  0x475

main:
    xorw    %bp, %bp                    # drives that answered
    movb    $0x80, %bl                  # the drive
next:
    movw    $PARAMS_SIZE, PARAMS
    movw    $PARAMS, %si
    movb    %bl, %dl
    movb    $0x48, %ah
    pushw   %bx
    int     $0x13
    popw    %bx
    jc      1f
    incw    %bp
    movw    $s_drive, %si
    call    puts
    movb    %bl, %al
    call    put_hex8
    movw    $s_sectors, %si
    call    puts
    movl    PARAMS + 0x14, %eax         # total sectors: high dword, then low
    call    put_hex32
    movl    PARAMS + 0x10, %eax
    call    put_hex32
    movb    $'\n', %al
    call    putc
1:  incb    %bl
    cmpb    $0x84, %bl
    jb      next

    movw    $s_drives, %si
    call    puts
    movzwl  %bp, %eax
    call    put_dec32
    movw    $s_bios_count, %si
    call    puts
    movzbl  BDA_HD_COUNT, %eax
    call    put_dec32
    movw    $s_done, %si
    call    puts
    jmp     power_off

s_drive:        .asciz  "drive "
s_sectors:      .asciz  " sectors="
s_drives:       .asciz  "drives="
s_bios_count:   .asciz  "\nbios-hd-count="
s_done:         .asciz  "\nmbr-drives done\n"

    MBR_END
