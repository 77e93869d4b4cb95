# mbr_pam - MBR program: what the i440FX's PAM registers do once the BIOS has booted, and the
# PCI-to-ISA bridge at 00:01.0. Configuration space is read and written through 0xcf8/0xcfc.
# Prints, in this order:
#       pam=<PAM0..PAM6 (00:00.0 bytes 0x59..0x5f), 2 hex digits each>
#       pam-writes=<13 characters, one per PAM segment: 0xF0000, then 0xC0000, 0xC4000, ..
#                   0xEC000>: `w` if a byte written at segment start + 0x1000 reads back,
#                   `-` if not (the original byte is written back at once, interrupts off)
#       pam-probe rom=<a> write-only=<b> read-only=<c> dropped=<d> wrote=<w>
#                   with interrupts off, at 0xED001 (PAM6's high nibble): attribute 3, read the
#                   RAM byte r; attribute 0 (ROM), read a; attribute 2 (write-only), write
#                   w = r xor 0x5a, read b; attribute 1 (read-only), read c, write not c, read d;
#                   then attribute 3, r written back and PAM6 restored. Each 2 hex digits.
#       isa-bridge id=<00:01.0 dword 0x00> class=<dword 0x08> header=<byte 0x0e>
#                   pirq=<dword 0x60> (8, 8, 2 and 8 hex digits)
# then "mbr-pam done" and ACPI power-off. Two sectors: write the whole image at the start of
# the disk; the boot sector (MBR_LOAD_STAGE2) loads sector 1 to 0x7e00 with int 13h AH=42h
# and jumps there (if that fails it prints "pam: load error=<AH>" and powers off).
    .include "mbr.inc"

    .set CONFIG_ADDRESS,    0xcf8
    .set HOST_BRIDGE,       0x80000000      # CONFIG_ADDRESS of 00:00.0, register 0
    .set ISA_BRIDGE,        0x80000800      # 00:01.0
    .set PAM0,              0x59
    .set PAM6,              0x5f
    .set PROBE_SEGMENT,     0xed00          # the probe at 0xED001 (PAM6's high nibble),
    .set PROBE_OFFSET,      1               # where SeaBIOS's ROM byte is not zero
    .set RESULTS,           SECTOR_BUF      # rom, write-only, read-only, dropped, wrote
    .set SAVED_PAM6,        SECTOR_BUF + 8
    .set SAVED_RAM,         SECTOR_BUF + 9

# ---- sector 0: load the rest -------------------------------------------------------------
main:
    MBR_LOAD_STAGE2 1, pam                  # mbr::PAM_SECTORS - 1 in lib.rs

# ---- sector 1, at 0x7e00 -----------------------------------------------------------------
stage2:
    movw    $s_pam, %si
    call    puts
    movl    $HOST_BRIDGE + PAM0, %ebx
1:  movl    %ebx, %eax
    call    cfg_read8
    call    put_hex8
    incw    %bx
    cmpb    $PAM6 + 1, %bl
    jb      1b

    movw    $s_writes, %si
    call    puts
    movw    $0xf100, %ax
    call    probe_write
    movw    $0xc100, %ax
2:  call    probe_write
    addw    $0x400, %ax
    cmpw    $0xf100, %ax
    jb      2b

    movl    $HOST_BRIDGE + PAM6, %eax
    call    cfg_read8
    movb    %al, SAVED_PAM6
    movw    $PROBE_SEGMENT, %ax
    movw    %ax, %es
    cli
    movb    $0x30, %bl
    call    set_pam6_high
    movb    %es:PROBE_OFFSET, %al
    movb    %al, SAVED_RAM
    movb    $0x00, %bl
    call    set_pam6_high
    movb    %es:PROBE_OFFSET, %al
    movb    %al, RESULTS
    movb    $0x20, %bl
    call    set_pam6_high
    movb    SAVED_RAM, %al
    xorb    $0x5a, %al
    movb    %al, RESULTS + 4
    movb    %al, %es:PROBE_OFFSET
    movb    %es:PROBE_OFFSET, %al
    movb    %al, RESULTS + 1
    movb    $0x10, %bl
    call    set_pam6_high
    movb    %es:PROBE_OFFSET, %al
    movb    %al, RESULTS + 2
    notb    %al
    movb    %al, %es:PROBE_OFFSET
    movb    %es:PROBE_OFFSET, %al
    movb    %al, RESULTS + 3
    movb    $0x30, %bl
    call    set_pam6_high
    movb    SAVED_RAM, %al
    movb    %al, %es:PROBE_OFFSET
    movb    SAVED_PAM6, %bl
    call    write_pam6
    sti
    xorw    %ax, %ax
    movw    %ax, %es

    movw    $s_probe, %si                   # label, result byte; 5 times
    movw    $RESULTS, %bx
    movw    $5, %cx
3:  call    puts
4:  lodsb                                   # skip to the next label
    testb   %al, %al
    jnz     4b
    movb    (%bx), %al
    incw    %bx
    call    put_hex8
    loop    3b

    call    puts                            # " \nisa-bridge id=" follows the labels
    movl    $ISA_BRIDGE, %eax
    call    cfg_read32
    call    put_hex32
    movw    $s_class, %si
    call    puts
    movl    $ISA_BRIDGE + 0x08, %eax
    call    cfg_read32
    call    put_hex32
    movw    $s_header, %si
    call    puts
    movl    $ISA_BRIDGE + 0x0e, %eax
    call    cfg_read8
    call    put_hex8
    movw    $s_pirq, %si
    call    puts
    movl    $ISA_BRIDGE + 0x60, %eax
    call    cfg_read32
    call    put_hex32
    movw    $s_done, %si
    call    puts
    jmp     power_off

# %eax = CONFIG_ADDRESS (bits 0..1 ignored); returns the dword in %eax. Clobbers %dx.
cfg_read32:
    pushl   %eax
    andb    $0xfc, %al
    movw    $CONFIG_ADDRESS, %dx
    outl    %eax, %dx
    popl    %eax
    movb    $0xfc, %dl
    inl     %dx, %eax
    ret

# %eax = CONFIG_ADDRESS with the byte's offset; returns the byte in %al. Clobbers the rest of
# %eax and %dx.
cfg_read8:
    pushw   %cx
    movb    %al, %cl
    call    cfg_read32
    andb    $3, %cl
    shlb    $3, %cl
    shrl    %cl, %eax
    popw    %cx
    ret

# PAM6 = (saved PAM6 & 0x0f) | %bl: only the high nibble (0xEC000..0xEFFFF) changes.
set_pam6_high:
    movb    SAVED_PAM6, %al
    andb    $0x0f, %al
    orb     %al, %bl
# PAM6 = %bl. Clobbers %eax, %dx.
write_pam6:
    movl    $HOST_BRIDGE + (PAM6 & 0xfc), %eax
    movw    $CONFIG_ADDRESS, %dx
    outl    %eax, %dx
    movb    $0xfc + (PAM6 & 3), %dl
    movb    %bl, %al
    outb    %al, %dx
    ret

# Writes the inverse of the byte at %ax:0, reads it back, writes the original back (interrupts
# off meanwhile) and prints `w` if the inverse read back, else `-`. Keeps %ax.
probe_write:
    pushw   %ax
    movw    %ax, %es
    cli
    movb    %es:0, %bl
    movb    %bl, %bh
    notb    %bh
    movb    %bh, %es:0
    movb    %es:0, %cl
    movb    %bl, %es:0
    sti
    movb    $'-', %al
    cmpb    %bh, %cl
    jne     1f
    movb    $'w', %al
1:  call    putc
    popw    %ax
    ret

s_pam:      .asciz  "pam="
s_writes:   .asciz  "\npam-writes="
s_probe:    .asciz  "\npam-probe rom="
            .asciz  " write-only="
            .asciz  " read-only="
            .asciz  " dropped="
            .asciz  " wrote="
            .asciz  "\nisa-bridge id="
s_class:    .asciz  " class="
s_header:   .asciz  " header="
s_pirq:     .asciz  " pirq="
s_done:     .asciz  "\nmbr-pam done\n"

    MBR_STAGE2_END
