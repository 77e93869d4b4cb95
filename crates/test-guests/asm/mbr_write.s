# mbr_write - MBR program: writes a pattern sector to LBAs 3 and 4 of the boot disk with
# int 13h AH=43h, reads each back with AH=42h and compares.
#
# The sector written to LBA n: bytes 0..13 "VIRTKIT-WRITE", 13..16 zero, 16..20 n (LE32),
# and every byte i from 20 on is (i mod 256) xor (n mod 256).
# For each LBA it prints one of
#       write lba=<n> ok                        written, read back, equal
#       write lba=<n> error=<AH>                the write failed (a read-only disk)
#       write lba=<n> read-error=<AH>           the read back failed
#       write lba=<n> mismatch                  the read back differs
# then "mbr-write done" and ACPI power-off.
    .include "mbr.inc"

    .set WRITE_BUF, SECTOR_BUF
    .set READ_BUF,  SECTOR_BUF + SECTOR_SIZE

main:
    movw    $3, %bp                     # the LBA
next:
    xorw    %bx, %bx                    # the fill: byte i = i xor LBA
1:  movw    %bp, %ax
    xorb    %bl, %al
    movb    %al, WRITE_BUF(%bx)
    incw    %bx
    cmpw    $SECTOR_SIZE, %bx
    jb      1b
    movzwl  %bp, %eax                   # the header
    movl    %eax, WRITE_BUF + 16
    movl    %eax, dap_lba
    xorl    %eax, %eax
    movl    %eax, WRITE_BUF + 12
    movw    $s_magic, %si
    movw    $WRITE_BUF, %di
    movw    $13, %cx
    rep movsb

    movw    $s_write, %si
    call    puts
    movzwl  %bp, %eax
    call    put_dec32

    movw    $WRITE_BUF, dap_off
    movw    $1, dap_count
    movw    $0x4300, %ax                # extended write, no verify
    call    int13_dap
    movw    $s_error, %si
    jc      3f

    movw    $READ_BUF, %di              # clear the read buffer, read back
    movw    $SECTOR_SIZE, %cx
    xorb    %al, %al
    rep stosb
    movw    $READ_BUF, dap_off
    movw    $1, dap_count
    movb    $0x42, %ah
    call    int13_dap
    movw    $s_read_error, %si
    jc      3f

    movw    $WRITE_BUF, %si
    movw    $READ_BUF, %di
    movw    $SECTOR_SIZE, %cx
    repe cmpsb
    movw    $s_mismatch, %si
    jne     4f
    movw    $s_ok, %si
    jmp     4f
3:  call    puts                        # " error=" or " read-error=", then AH
    movb    %ah, %al
    call    put_hex8
    movw    $s_newline, %si
4:  call    puts
    incw    %bp
    cmpw    $5, %bp
    jb      next

    movw    $s_done, %si
    call    puts
    jmp     power_off

s_magic:        .ascii  "VIRTKIT-WRITE"
s_write:        .asciz  "write lba="
s_error:        .asciz  " error="
s_read_error:   .asciz  " read-error="
s_mismatch:     .asciz  " mismatch\n"
s_ok:           .asciz  " ok\n"
s_newline:      .asciz  "\n"
s_done:         .asciz  "mbr-write done\n"

    MBR_END
