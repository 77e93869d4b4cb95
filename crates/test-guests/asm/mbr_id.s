# mbr_id - MBR program: tells which disk the BIOS booted. Prints
#       boot-drive=<DL, 2 hex digits>
#       boot-disk=<marker>
# where the marker is the text at the start of sector 1 (LBA 1) of the boot disk, read with
# int 13h AH=42h: up to 64 bytes, ending before the first byte outside printable ASCII
# (0x20..0x7e: a NUL or a newline ends it). If the read fails: boot-disk error=<AH>.
# Then "mbr-id done" and ACPI power-off.
    .include "mbr.inc"

    .set MARKER_MAX, 64

main:
    movw    $s_drive, %si
    call    puts
    movb    boot_drive, %al
    call    put_hex8
    movw    $s_disk, %si
    call    puts
    movl    $1, dap_lba
    movb    $0x42, %ah
    call    int13_dap
    jc      3f
    movb    $'=', %al
    call    putc
    movw    $SECTOR_BUF, %si
    movw    $MARKER_MAX, %cx
1:  lodsb
    cmpb    $0x20, %al
    jb      2f
    cmpb    $0x7e, %al
    ja      2f
    call    putc
    loop    1b
2:  movw    $s_done, %si
    call    puts
    jmp     power_off
3:  movw    $s_error, %si
    call    puts
    movb    %ah, %al
    call    put_hex8
    jmp     2b

s_drive:    .asciz  "boot-drive="
s_disk:     .asciz  "\nboot-disk"
s_error:    .asciz  " error="
s_done:     .asciz  "\nmbr-id done\n"

    MBR_END
