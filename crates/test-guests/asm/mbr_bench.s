# mbr_bench - MBR program: reads 64 MiB of the boot disk, LBA 1 onward, with int 13h AH=42h in
# 64-sector (32 KiB) requests into one buffer at 1000:0000 (physical 0x10000), timed with
# rdtsc. Prints
#       bench-read bytes=67108864 tsc=<TSC cycles, 16 hex digits>
# or, if a read fails,
#       bench-read error=<AH> lba=<first LBA of the failed request, decimal>
# then "mbr-bench done" and ACPI power-off. The disk needs at least 1 + 131072 sectors.
    .include "mbr.inc"

    .set CHUNK_SECTORS, 64
    .set TOTAL_SECTORS, (64 << 20) / SECTOR_SIZE
    .set BENCH_SEG,     0x1000
    .set T0,            SCRATCH         # qword: TSC at the start

main:
    movw    $BENCH_SEG, dap_seg
    movw    $0, dap_off
    movl    $1, dap_lba
    movw    $TOTAL_SECTORS / CHUNK_SECTORS, %bp
    rdtsc
    movl    %eax, T0
    movl    %edx, T0 + 4
1:  movw    $CHUNK_SECTORS, dap_count
    movb    $0x42, %ah
    call    int13_dap
    jc      2f
    addl    $CHUNK_SECTORS, dap_lba
    decw    %bp
    jnz     1b
    rdtsc
    subl    T0, %eax
    sbbl    T0 + 4, %edx
    movw    $s_result, %si
    call    puts
    xchgl   %eax, %edx
    call    put_hex32
    xchgl   %eax, %edx
    call    put_hex32
    jmp     3f
2:  movw    $s_error, %si
    call    puts
    movb    %ah, %al
    call    put_hex8
    movw    $s_lba, %si
    call    puts
    movl    dap_lba, %eax
    call    put_dec32
3:  movw    $s_done, %si
    call    puts
    jmp     power_off

s_result:   .asciz  "bench-read bytes=67108864 tsc="
s_error:    .asciz  "bench-read error="
s_lba:      .asciz  " lba="
s_done:     .asciz  "\nmbr-bench done\n"

    MBR_END
