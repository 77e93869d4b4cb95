# hello_elf32 - PVH guest shipped as an ELF32 file (ELFCLASS32, EM_386, as `ld -m elf_i386`
# links it; not repackaged as ELF64): prints "virtkit-guest: hello from pvh elf32", then ACPI
# power-off. If the power-off returns (no ACPI S5 on this machine): cli; hlt forever.
    .include "pvh.inc"

    .text
main:
    movl    $msg, %esi
    call    puts
    jmp     power_off

    .section .rodata
msg:    .asciz "virtkit-guest: hello from pvh elf32\n"
