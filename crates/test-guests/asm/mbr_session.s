# mbr_session - MBR program for VM-manager tests: persistence, identity, liveness and a clean
# shutdown of a firmware-booted guest. Longer than one sector: write the whole image at the
# start of the disk. Sector 0 (the boot sector, MBR_LOAD_STAGE2) loads sectors 1..3 to 0x7e00
# with int 13h AH=42h and jumps there; if that fails it prints "session: load error=<AH>" and
# powers off.
#
# 1. Boot counter, in the state sector at LBA STATE_LBA (2048): bytes 0..16 STATE_MAGIC, 16..20
#    the boot count (LE32), the rest zero. It reads the sector (a failed read or no magic counts
#    as 0), adds 1, writes the sector back (AH=43h), reads it back (AH=42h), compares, and prints
#       session: boot <n>                                     saved
#       session: boot <n> (not saved: error <AH>)             the write failed (read-only disk)
#       session: boot <n> (not saved: read-back error <AH>)   the read back failed
#       session: boot <n> (not saved: read-back mismatch)     the read back differs
#    (n decimal, AH 2 lowercase hex digits).
# 2. Identity: scans 0xf0000..0xfffff on 16-byte boundaries for an SMBIOS entry point with a
#    valid checksum, "_SM_" (2.x, 32-bit table address) or "_SM3_" (3.0, 64-bit address; only
#    tables below 4 GiB are read). The structure table is copied to 0x10000 with int 15h AH=87h
#    (BIOS block move; SeaBIOS puts big tables high in RAM), then walked to the first type 1
#    (System Information) structure with a UUID. It prints
#       session: uuid=<8-4-4-4-12 lowercase hex>   (first three fields little-endian, SMBIOS 2.6+)
#       session: serial=<Serial Number string>     (printable ASCII, at most 64 bytes; may be empty)
#    or "session: smbios none" if there is no entry point, no type 1 or the copy fails.
# 3. Clears a stale PWRBTN_STS, sets PWRBTN_EN, prints "session: ready", then loops with
#    interrupts on (hlt, woken by the BIOS timer): every TICK_BIOS_TICKS ticks of the BIOS tick
#    counter at 0:0x46c (18.2 Hz) it prints "session: tick <n>" (n = 1, 2, ...); when PM1_STS
#    bit 8 (PWRBTN_STS) is set it clears it, prints "session: power button" and powers off.
    .include "mbr.inc"

    .set STATE_LBA,         2048
    .set STATE_MAGIC_LEN,   16
    .set STATE_BUF,         0x1000          # below the stack, above the BIOS data area
    .set CHECK_BUF,         STATE_BUF + SECTOR_SIZE
    .set SMBIOS_SEG,        0x1000          # the structure table copy, linear 0x10000
    .set SMBIOS_COPY_MAX,   0xfff0          # bytes of the table copied at most
    .set SERIAL_MAX,        64
    .set BIOS_TICKS,        0x46c           # dword, incremented by IRQ 0 at 18.2 Hz
    .set TICK_BIOS_TICKS,   5               # ~0.27 s
    .set SMBIOS_TYPE1_MIN_LEN, 0x19         # a type 1 structure with a UUID (SMBIOS 2.1+)

# ---- sector 0: load the rest -------------------------------------------------------------
main:
    MBR_LOAD_STAGE2 3, session              # mbr::SESSION_SECTORS - 1 in lib.rs

# ---- sectors 1..3, at 0x7e00 -------------------------------------------------------------
stage2:
    call    boot_counter
    call    identity
    ACPI_POWER_BUTTON_ENABLE
    movw    $s_ready, %si
    call    puts

    xorl    %ebp, %ebp                  # ticks printed
    movl    BIOS_TICKS, %edi            # BIOS tick count at the last line
    sti
idle:
    hlt                                 # until the next interrupt (IRQ 0 at the latest)
    movw    $PM1_STS, %dx
    inw     %dx, %ax
    testw   $PM1_PWRBTN, %ax
    jnz     pressed
    movl    BIOS_TICKS, %eax
    movl    %eax, %ecx
    subl    %edi, %ecx                  # wraps correctly; at midnight the count restarts at
    cmpl    $TICK_BIOS_TICKS, %ecx      # 0, which gives one early tick
    jb      idle
    movl    %eax, %edi
    incl    %ebp
    movw    $s_tick, %si
    call    puts
    movl    %ebp, %eax
    call    put_dec32
    movw    $s_newline, %si
    call    puts
    jmp     idle
pressed:
    movw    $PM1_PWRBTN, %ax            # write 1 to clear
    outw    %ax, %dx
    movw    $s_power_button, %si
    call    puts
    jmp     power_off

# Reads, increments, writes and checks the boot counter; prints the "session: boot" line.
boot_counter:
    movl    $STATE_LBA, dap_lba
    movw    $STATE_BUF, dap_off
    movw    $1, dap_count
    movb    $0x42, %ah
    call    int13_dap
    movl    $0, %ebx                    # the count so far (flags kept)
    jc      1f                          # unreadable: start from 0
    movw    $STATE_BUF, %di
    movw    $state_magic, %si
    movw    $STATE_MAGIC_LEN, %cx
    repe cmpsb
    jne     1f                          # no magic: start from 0
    movl    STATE_BUF + STATE_MAGIC_LEN, %ebx
1:  incl    %ebx

    movw    $STATE_BUF, %di             # the new sector: magic, count, zeros
    movw    $SECTOR_SIZE, %cx
    xorb    %al, %al
    rep stosb
    movw    $STATE_BUF, %di
    movw    $state_magic, %si
    movw    $STATE_MAGIC_LEN, %cx
    rep movsb
    movl    %ebx, STATE_BUF + STATE_MAGIC_LEN

    movw    $s_boot, %si
    call    puts
    movl    %ebx, %eax
    call    put_dec32

    movw    $STATE_BUF, dap_off
    movw    $1, dap_count
    movw    $0x4300, %ax                # extended write, no verify
    call    int13_dap
    movw    $s_not_saved, %si
    jc      3f

    movw    $CHECK_BUF, %di             # clear the read buffer, read back
    movw    $SECTOR_SIZE, %cx
    xorb    %al, %al
    rep stosb
    movw    $CHECK_BUF, dap_off
    movw    $1, dap_count
    movb    $0x42, %ah
    call    int13_dap
    movw    $s_read_back_error, %si
    jc      3f
    movw    $STATE_BUF, %si
    movw    $CHECK_BUF, %di
    movw    $SECTOR_SIZE, %cx
    repe cmpsb
    movw    $s_mismatch, %si
    jne     4f
    movw    $s_newline, %si
    jmp     4f
3:  call    puts                        # " (not saved: ...error ", AH, ")"
    movb    %ah, %al
    call    put_hex8
    movw    $s_close, %si
4:  call    puts
    ret

# Finds SMBIOS type 1 and prints the uuid and serial lines, or "session: smbios none".
identity:
    pushw   %es
    movw    $0xf000, %ax
    movw    %ax, %es
    xorw    %di, %di
scan:
    cmpl    $0x5f4d535f, %es:(%di)      # "_SM_"
    jne     1f
    movzbw  %es:5(%di), %cx             # entry point length
    call    checksum
    jnz     next_anchor
    movzwl  %es:0x16(%di), %eax         # structure table length
    movl    %eax, table_len
    movl    %es:0x18(%di), %eax         # structure table address
    movl    %eax, table_addr
    movzwl  %es:0x1c(%di), %eax         # number of structures
    movl    %eax, table_count
    jmp     copy_table
1:  cmpl    $0x334d535f, %es:(%di)      # "_SM3_"
    jne     next_anchor
    cmpb    $'_', %es:4(%di)
    jne     next_anchor
    movzbw  %es:6(%di), %cx             # entry point length
    call    checksum
    jnz     next_anchor
    cmpl    $0, %es:0x14(%di)           # table above 4 GiB: out of reach
    jne     next_anchor
    movl    %es:0x0c(%di), %eax         # structure table maximum size
    movl    %eax, table_len
    movl    %es:0x10(%di), %eax         # structure table address (low half)
    movl    %eax, table_addr
    movl    $0xffffffff, table_count    # 3.0 gives no count: stop at type 127 or the end
    jmp     copy_table
next_anchor:
    addw    $16, %di
    jnz     scan                        # 0xfff0 + 16 wraps to 0: done
    jmp     smbios_none

copy_table:                             # int 15h AH=87h: CX words to gdt87's destination
    xorw    %ax, %ax
    movw    %ax, %es                    # ES:SI = gdt87
    movl    table_len, %eax
    cmpl    $SMBIOS_COPY_MAX, %eax
    jbe     1f
    movl    $SMBIOS_COPY_MAX, %eax
    movl    %eax, table_len
1:  testl   %eax, %eax
    jz      smbios_none
    incl    %eax
    shrl    $1, %eax
    movw    %ax, %cx
    movl    table_addr, %eax
    movw    %ax, src_base_low
    shrl    $16, %eax
    movb    %al, src_base_mid
    movb    %ah, src_base_high
    movw    $gdt87, %si
    movb    $0x87, %ah
    int     $0x15
    jc      smbios_none
    testb   %ah, %ah
    jnz     smbios_none

    movw    $SMBIOS_SEG, %ax            # walk the copy in ES
    movw    %ax, %es
    movw    table_len, %dx              # end of the table (offset in ES)
    xorw    %bx, %bx                    # the structure
walk:
    movw    %bx, %ax
    addw    $4, %ax                     # the header must fit
    jc      smbios_none
    cmpw    %dx, %ax
    ja      smbios_none
    movb    %es:(%bx), %al              # type
    cmpb    $127, %al                   # end of table
    je      smbios_none
    movzbw  %es:1(%bx), %cx             # length of the formatted area
    cmpb    $1, %al
    jne     2f
    cmpw    $SMBIOS_TYPE1_MIN_LEN, %cx
    jae     type1
2:  movw    %bx, %si                    # skip the formatted area and the strings, which
    addw    %cx, %si                    # end with two NULs
    jc      smbios_none
3:  movw    %si, %ax
    addw    $2, %ax
    jc      smbios_none
    cmpw    %dx, %ax
    ja      smbios_none
    cmpw    $0, %es:(%si)
    je      4f
    incw    %si
    jmp     3b
4:  movw    %ax, %bx
    decl    table_count
    jnz     walk
    jmp     smbios_none

type1:
    movw    $s_uuid, %si
    call    puts
    movl    %es:8(%bx), %eax            # time_low, LE
    call    put_hex32
    movb    $'-', %al
    call    putc
    movw    %es:12(%bx), %ax            # time_mid, LE
    call    put_hex16
    movb    $'-', %al
    call    putc
    movw    %es:14(%bx), %ax            # time_hi_and_version, LE
    call    put_hex16
    movb    $'-', %al
    call    putc
    leaw    16(%bx), %si                # clock_seq and node: bytes in order
    movw    $2, %cx
    call    put_hex_bytes
    movb    $'-', %al
    call    putc
    movw    $6, %cx
    call    put_hex_bytes

    movw    $s_serial, %si
    call    puts
    movzbw  %es:7(%bx), %cx             # serial number: string index (0: none)
    jcxz    9f
    movzbw  %es:1(%bx), %si
    addw    %bx, %si                    # the first string
5:  cmpw    %dx, %si
    jae     9f
    cmpb    $0, %es:(%si)               # an empty string ends the set: no such string
    je      9f
    decw    %cx
    jz      7f
6:  incw    %si                         # skip one string
    cmpw    %dx, %si
    jae     9f
    cmpb    $0, %es:-1(%si)
    jne     6b
    jmp     5b
7:  movw    $SERIAL_MAX, %cx            # print it
8:  cmpw    %dx, %si
    jae     9f
    movb    %es:(%si), %al
    cmpb    $0x20, %al
    jb      9f
    cmpb    $0x7e, %al
    ja      9f
    call    putc
    incw    %si
    loop    8b
9:  movw    $s_newline, %si
    call    puts
    popw    %es
    ret

smbios_none:
    movw    $s_smbios_none, %si
    call    puts
    popw    %es
    ret

# ZF set if the %cx bytes at %es:(%di) add up to 0 (mod 256) and 16 <= %cx <= 32.
# Clobbers %al, %cx, %si.
checksum:
    cmpw    $16, %cx
    jb      2f
    cmpw    $32, %cx
    ja      2f
    movw    %di, %si
    xorb    %al, %al
1:  addb    %es:(%si), %al
    incw    %si
    loop    1b
    testb   %al, %al
    ret
2:  orw     $1, %cx                     # ZF clear
    ret

# %ax as 4 lowercase hex digits.
put_hex16:
    pushw   %ax
    movb    %ah, %al
    call    put_hex8
    popw    %ax
    jmp     put_hex8

# The %cx bytes at %es:(%si) as hex, 2 digits each. Clobbers %al, %cx, %si.
put_hex_bytes:
    movb    %es:(%si), %al
    call    put_hex8
    incw    %si
    loop    put_hex_bytes
    ret

# int 15h AH=87h descriptor table: null, BIOS scratch, source, destination, BIOS CS, BIOS SS.
# Data descriptors: limit 0xffff, base, access 0x93 (present, writable, accessed).
    .balign 8
gdt87:
    .quad   0, 0
    .word   0xffff
src_base_low:   .word   0
src_base_mid:   .byte   0
    .byte   0x93, 0
src_base_high:  .byte   0
    .word   0xffff, SMBIOS_SEG << 4 & 0xffff
    .byte   SMBIOS_SEG >> 12, 0x93, 0, 0
    .quad   0, 0

table_addr:     .long   0
table_len:      .long   0
table_count:    .long   0

state_magic:        .ascii  "VIRTKIT-SESSION\0"
s_boot:             .asciz  "session: boot "
s_not_saved:        .asciz  " (not saved: error "
s_read_back_error:  .asciz  " (not saved: read-back error "
s_mismatch:         .asciz  " (not saved: read-back mismatch)\n"
s_close:            .asciz  ")\n"
s_uuid:             .asciz  "session: uuid="
s_serial:           .asciz  "\nsession: serial="
s_smbios_none:      .asciz  "session: smbios none\n"
s_ready:            .asciz  "session: ready\n"
s_tick:             .asciz  "session: tick "
s_power_button:     .asciz  "session: power button\n"
s_newline:          .asciz  "\n"

    MBR_STAGE2_END
