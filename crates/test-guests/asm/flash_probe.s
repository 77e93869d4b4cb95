# flash_probe - raw 64 KiB firmware image for an EFI-style machine: a 960 KiB variable store
# (CFI flash) right below it, at 0xfff00000, and the PIIX4 PM function at 00:01.3. It drives the
# flash with OVMF's own command sequences (QemuFlashFvbServicesRuntimeDxe) and prints on COM1:
#   virtkit-guest: flash probe clear=XX status=XX       (the byte read back after 0x50, and the
#                                                        status after 0x70: 00 means flash)
#   virtkit-guest: flash count=XX                        (the byte at 0xfff01000 as found)
#   virtkit-guest: flash erase-status=XX erased=XX       (after block erase 0x20/0xd0 there)
#   virtkit-guest: flash programmed=XX                   (after 0x10 + count+1, 0xff: 01 when
#                                                        the count was erased, ff)
#   virtkit-guest: pm id=XXXXXXXX pmba=XXXXXXXX misc=XX  (00:01.3 through 0xcf8/0xcfc)
# then powers off through OVMF's port (SLP_EN at 0xb004); if that returns, it prints
# `virtkit-guest: flash no power-off` and uses the FADT's PM1 control block.
#
# Real mode at the reset vector switches to flat 32-bit protected mode (GDT in the image), with
# a stack in low RAM at 0x7000. The 32-bit code runs from the image's mirror below 1 MiB
# (0xf0000), as SeaBIOS's does.
    .include "common.inc"

    .set IMAGE_BASE,     0xf0000         # the mirror of the image below 1 MiB
    .set FLASH_BASE,     0xfff00000
    .set PROBE,          FLASH_BASE + 0x10
    .set COUNTER,        FLASH_BASE + 0x1000
    .set OVMF_PM1_CNT,   0xb004
    .set PCI_ADDRESS,    0xcf8
    .set PCI_DATA,       0xcfc
    .set PM_FUNCTION,    0x80000b00      # bus 0, device 1, function 3

    .section .image, "ax"

    .code32
# print the NUL-terminated string at %esi. Clobbers %eax, %edx, %esi.
puts:
    movb    (%esi), %al
    testb   %al, %al
    jz      1f
    SERIAL_PUTC_AL
    incl    %esi
    jmp     puts
1:  ret

# print %al as two hex digits. Clobbers %eax, %ecx, %edx.
hex8:
    movb    %al, %cl
    shrb    $4, %al
    call    nibble
    movb    %cl, %al
    andb    $0x0f, %al
    call    nibble
    ret
nibble:
    addb    $'0', %al
    cmpb    $'9', %al
    jbe     1f
    addb    $('a' - '0' - 10), %al
1:  SERIAL_PUTC_AL
    ret

# print %eax as eight hex digits. Clobbers %eax, %ecx, %edx, %ebx.
hex32:
    movl    %eax, %ebx
    roll    $8, %ebx
    movb    %bl, %al
    call    hex8
    roll    $8, %ebx
    movb    %bl, %al
    call    hex8
    roll    $8, %ebx
    movb    %bl, %al
    call    hex8
    roll    $8, %ebx
    movb    %bl, %al
    call    hex8
    ret

.macro PUTS label
    movl    $(IMAGE_BASE + \label), %esi
    call    puts
.endm

# the PCI configuration register in %eax (an 0xcf8 address) into %eax
pci_read:
    movw    $PCI_ADDRESS, %dx
    outl    %eax, %dx
    movw    $PCI_DATA, %dx
    inl     %dx, %eax
    ret

pm32:
    movw    $0x10, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movl    $0x7000, %esp

    # OVMF's probe: clear status and read back, read status and read, then read array.
    PUTS    msg_probe
    movb    $0x50, PROBE
    movb    PROBE, %al
    call    hex8
    PUTS    msg_status
    movb    $0x70, PROBE
    movb    PROBE, %al
    call    hex8
    movb    $0xff, PROBE
    PUTS    msg_nl

    PUTS    msg_count
    movb    COUNTER, %al
    movb    %al, %bh                # the count as found, kept in %bh (hex8 leaves %ebx alone)
    call    hex8
    PUTS    msg_nl
    movl    %ebx, %edi              # %edi bits 8..15: the count

    # Block erase at the counter's block, then read status, then back to read array.
    PUTS    msg_erase
    movb    $0x20, COUNTER
    movb    $0xd0, COUNTER
    movb    $0x70, COUNTER
    movb    COUNTER, %al
    call    hex8
    movb    $0xff, COUNTER
    PUTS    msg_erased
    movb    COUNTER, %al
    call    hex8
    PUTS    msg_nl

    # Program count + 1 (an erased count, 0xff, becomes 0x01).
    movl    %edi, %eax
    movb    %ah, %al
    incb    %al
    jnz     1f
    movb    $1, %al
1:  movb    $0x10, COUNTER
    movb    %al, COUNTER
    movb    $0xff, COUNTER
    PUTS    msg_programmed
    movb    COUNTER, %al
    call    hex8
    PUTS    msg_nl

    # The PIIX4 PM function.
    PUTS    msg_pm
    movl    $PM_FUNCTION, %eax
    call    pci_read
    call    hex32
    PUTS    msg_pmba
    movl    $(PM_FUNCTION + 0x40), %eax
    call    pci_read
    call    hex32
    PUTS    msg_misc
    movl    $(PM_FUNCTION + 0x80), %eax
    call    pci_read
    call    hex8
    PUTS    msg_nl

    # OVMF's power-off: SLP_TYP 0, then SLP_EN, at 0xb004.
    movw    $OVMF_PM1_CNT, %dx
    movw    $0, %ax
    outw    %ax, %dx
    movw    $SLP_EN, %ax
    outw    %ax, %dx
    PUTS    msg_no_poweroff
    ACPI_POWER_OFF
    HALT_FOREVER

msg_probe:      .asciz "virtkit-guest: flash probe clear="
msg_status:     .asciz " status="
msg_count:      .asciz "virtkit-guest: flash count="
msg_erase:      .asciz "virtkit-guest: flash erase-status="
msg_erased:     .asciz " erased="
msg_programmed: .asciz "virtkit-guest: flash programmed="
msg_pm:         .asciz "virtkit-guest: pm id="
msg_pmba:       .asciz " pmba="
msg_misc:       .asciz " misc="
msg_no_poweroff: .asciz "virtkit-guest: flash no power-off\n"
msg_nl:         .asciz "\n"

    .balign 8
gdt:
    .quad   0
    # The accessed bits are set: the GDT is in ROM, where the CPU could not set them.
    .quad   0x00cf9b000000ffff      # 0x08: code, flat 4 GiB, 32-bit
    .quad   0x00cf93000000ffff      # 0x10: data, flat 4 GiB
gdt_desc:
    .word   gdt_desc - gdt - 1
    .long   IMAGE_BASE + gdt
idt_desc:                           # no interrupts are taken (cli); an empty IDT
    .word   0
    .long   0

    .code16
    .org    0xf000
start:
    cli
    cld
    ljmpw   $0xf000, $1f            # CS = the mirror below 1 MiB, as SeaBIOS starts
1:  SERIAL_INIT
    lidtl   %cs:idt_desc
    lgdtl   %cs:gdt_desc
    movl    %cr0, %eax
    andl    $~0xe0000000, %eax      # caches on (CD, NW clear) and no paging, as SeaBIOS does
    orl     $1, %eax                # PE
    movl    %eax, %cr0
    ljmpl   $0x08, $(IMAGE_BASE + pm32)

    .org    0xfff0                  # the reset vector: physical 0xfffffff0
reset_vector:
    jmp     start
    .org    0x10000, 0xf4
