# triple_fault - PVH guest: prints "virtkit-guest: triple fault next", loads an IDT with limit 0
# and executes ud2: #UD cannot be delivered (#GP), nor can #GP (#DF), nor #DF: triple fault,
# which the VMM sees as a shutdown (KVM_EXIT_SHUTDOWN). cli; hlt forever if it somehow returns.
    .include "pvh.inc"

    .text
main:
    movl    $msg, %esi
    call    puts
    lidt    empty_idt
    ud2
    jmp     halt_forever

    .section .rodata
msg:    .asciz "virtkit-guest: triple fault next\n"
    .p2align 2
    .word   0
empty_idt:
    .word   0                       # limit 0: every vector is outside the IDT
    .long   0
