; ferry bench guest: a tiny Multiboot v1 kernel that QEMU's `-kernel` loader boots
; straight into 32-bit protected mode (flat segments, paging off, interrupts off).
; It runs one of three workloads, chosen by the parameter block the host patches
; into the image (see bench/qemu/guest.ts, which assembles and patches this file):
;
;   mode 0 "idle"  : halt forever (cli; hlt).
;   mode 1 "ab"    : forever increment byte 0 of every 4 KiB page of [base, end)
;                    -- the workload of QEMU's own migration test.
;   mode 2 "dirty" : write one 32-bit word (a running count, so every write changes
;                    the page) into successive distinct pages of [base, end),
;                    wrapping around, paced with rdtsc at `pages_per_second`. The
;                    TSC is calibrated against PIT channel 2 (the shortest of three
;                    50 ms one-shots); after a stall it catches up at most 20 ms.
;                    Between writes it halts until the next ~1 kHz PIT tick, so the
;                    vCPU thread sleeps instead of spinning (like ferry's vCPU).
;
; Memory layout (guest physical):
;   LOAD + 0x0000  page 0: multiboot header, parameters (read-only), code
;   LOAD + 0x1000  page 1: status written by the guest, read by the host (`xp`)
;   LOAD + 0x2000  end of image; QEMU puts the multiboot info right after it.
; Code and written data live on different pages so TCG never sees self-modifying
; code. The image sits below 1 MiB, so the workloads' regions start at 1 MiB.
;
; Assemble: nasm -f bin -o guest.bin guest.asm

bits 32

LOAD            equ 0x10000          ; load address (below the 1 MiB workload region)
MB_MAGIC        equ 0x1BADB002
MB_FLAGS        equ 0x00010000       ; bit 16: the address fields below are valid
PARAM_MAGIC     equ 0x50595246       ; "FRYP" little-endian
READY_MAGIC     equ 0x52595246       ; "FRYR" little-endian
PIT_HZ          equ 1193182
CAL_TICKS       equ PIT_HZ / 20      ; 50 ms
STATUS          equ LOAD + 0x1000

org LOAD

; ---- multiboot header (file offset 0, 4-aligned, inside the first 8 KiB) ----
mb_header:
        dd MB_MAGIC
        dd MB_FLAGS
        dd -(MB_MAGIC + MB_FLAGS)    ; checksum: the three words sum to 0 mod 2^32
        dd mb_header                 ; header_addr
        dd LOAD                      ; load_addr: file offset 0 lands here
        dd 0                         ; load_end_addr: 0 = load the whole file
        dd 0                         ; bss_end_addr: no bss
        dd entry                     ; entry_addr

; ---- parameters, patched by the host (file offset 32) ----
p_magic:        dd PARAM_MAGIC       ; +32 lets the host find/verify the block
p_mode:         dd 0                 ; +36 0 idle, 1 ab, 2 dirty
p_base:         dd 0                 ; +40 first byte of the workload region
p_end:          dd 0                 ; +44 end (exclusive) of the workload region
p_pps:          dd 0                 ; +48 dirty: pages per second

; ---- status, on its own page (guest physical STATUS) ----
S_READY         equ STATUS + 0       ; READY_MAGIC once the workload loop runs
S_CAL           equ STATUS + 4       ; TSC ticks in the 50 ms calibration window
S_COUNT         equ STATUS + 8       ; 64-bit: ab passes done / dirty pages written
S_PER_PAGE      equ STATUS + 16      ; dirty: TSC ticks between two page writes
S_MAXLAG        equ STATUS + 20      ; dirty: backlog (ticks) caught up after a stall

entry:
        cli
        mov esp, STATUS + 0x800      ; stack below the IDT, in the status page
        xor eax, eax
        mov [S_READY], eax
        mov [S_CAL], eax
        mov [S_COUNT], eax
        mov [S_COUNT + 4], eax
        mov [S_PER_PAGE], eax
        mov [S_MAXLAG], eax
        mov eax, [p_mode]
        cmp eax, 1
        je ab
        cmp eax, 2
        je dirty
        ; fall through: idle

idle:
        mov dword [S_READY], READY_MAGIC
.halt:
        cli
        hlt
        jmp .halt

; ---- mode 1: QEMU's migration-test loop ----
ab:
        mov dword [S_READY], READY_MAGIC
.pass:
        mov esi, [p_base]
        mov edx, [p_end]
.page:
        inc byte [esi]
        add esi, 4096
        cmp esi, edx
        jb .page
        add dword [S_COUNT], 1
        adc dword [S_COUNT + 4], 0
        jmp .pass

; ---- mode 2: paced dirtying of distinct pages ----
dirty:
        mov ecx, [p_pps]
        test ecx, ecx
        jz idle                      ; a rate of 0 pages/s is the idle guest

        ; Calibrate: PIT channel 2, mode 0, CAL_TICKS; port 0x61 bit 5 is its OUT.
        ; Three windows, keep the shortest: a window during which the host
        ; descheduled this vCPU thread overestimates the TSC rate.
        mov dword [S_CAL], 0xFFFFFFFF
        mov ecx, 3
.cal_round:
        in al, 0x61
        and al, 0xFC                 ; speaker data off, gate off (reset the count)
        out 0x61, al
        or al, 0x01                  ; gate channel 2 on
        out 0x61, al
        mov al, 0xB0                 ; channel 2, lobyte/hibyte, mode 0, binary
        out 0x43, al
        mov al, CAL_TICKS & 0xFF
        out 0x42, al
        mov al, CAL_TICKS >> 8
        out 0x42, al
        rdtsc
        mov esi, eax
        mov edi, edx
.cal_wait:
        in al, 0x61
        test al, 0x20
        jz .cal_wait
        rdtsc
        sub eax, esi
        sbb edx, edi                 ; edx:eax = TSC ticks in 50 ms (edx is 0)
        cmp eax, [S_CAL]
        jae .cal_next
        mov [S_CAL], eax
.cal_next:
        dec ecx
        jnz .cal_round
        mov eax, [S_CAL]

        ; max lag = 20 ms worth of ticks (2/5 of the window), as ferry's vCPU
        push eax
        add eax, eax
        xor edx, edx
        mov ebx, 5
        div ebx
        mov [S_MAXLAG], eax
        pop eax

        ; ticks per page = cal * 20 / pps (64-bit product, 32-bit quotient)
        mov ebx, 20
        mul ebx
        div dword [p_pps]
        test eax, eax
        jnz .have_rate
        inc eax                      ; faster than the TSC can pace: as fast as possible
.have_rate:
        mov [S_PER_PAGE], eax
        mov ecx, eax                 ; ecx = ticks per page

        call setup_interrupts        ; GDT, IDT, PIC, PIT channel 0 at ~1 kHz

        mov esi, [p_base]            ; esi = next page to write
        rdtsc
        mov ebx, eax                 ; ebp:ebx = TSC deadline of the next write
        mov ebp, edx
        mov dword [S_READY], READY_MAGIC
.check:
        rdtsc
        cmp edx, ebp
        ja .due
        jb .sleep
        cmp eax, ebx
        jae .due
.sleep:                              ; nothing owed: halt until the next PIT tick
        sti                          ; (sti's one-instruction shadow makes sti;hlt atomic)
        hlt
        cli
        jmp .check
.due:
        ; Owed since the deadline; a stall (throttle, descheduled vCPU thread) is
        ; caught up at most S_MAXLAG ticks' worth, as ferry's vCPU does.
        sub eax, ebx
        sbb edx, ebp                 ; edx:eax = lag
        jnz .clamp
        cmp eax, [S_MAXLAG]
        jbe .write
.clamp:
        rdtsc
        sub eax, [S_MAXLAG]
        sbb edx, 0
        mov ebx, eax                 ; deadline = now - max lag
        mov ebp, edx
.write:
        mov eax, [S_COUNT]
        add eax, 1
        mov [S_COUNT], eax
        adc dword [S_COUNT + 4], 0
        mov [esi], eax               ; the one word: a running count
        add esi, 4096
        cmp esi, [p_end]
        jb .next
        mov esi, [p_base]
.next:
        add ebx, ecx
        adc ebp, 0                   ; deadline += ticks per page
        jmp .check

; ---- interrupts for the dirty mode's sleep ----
; Our own flat GDT (the loader's may be anywhere), an IDT whose 48 gates point at
; two stubs (exceptions halt; IRQs acknowledge the PIC and return), the PICs
; remapped to vectors 0x20-0x2f with only IRQ0 unmasked, and PIT channel 0 as a
; ~1 kHz rate generator. The IDT is built in the status page (data, not code).
IDT             equ STATUS + 0x800
PIT_DIVISOR     equ 1193             ; 1193182 / 1193 = 1000.15 Hz

setup_interrupts:
        lgdt [gdt_desc]
        jmp 0x08:.reload_cs
.reload_cs:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov fs, ax
        mov gs, ax
        xor edi, edi                 ; vector number
.gate:
        mov eax, exc_stub
        cmp edi, 0x20
        jb .fill
        mov eax, irq_stub
.fill:
        mov edx, eax
        and eax, 0xFFFF
        or eax, 0x08 << 16           ; selector: flat code
        and edx, 0xFFFF0000
        or edx, 0x8E00               ; present, ring 0, 32-bit interrupt gate
        mov [IDT + edi * 8], eax
        mov [IDT + edi * 8 + 4], edx
        inc edi
        cmp edi, 48
        jb .gate
        lidt [idt_desc]

        mov al, 0x11                 ; ICW1: init, ICW4 follows
        out 0x20, al
        out 0xA0, al
        mov al, 0x20                 ; ICW2: vector bases
        out 0x21, al
        mov al, 0x28
        out 0xA1, al
        mov al, 0x04                 ; ICW3: slave on IRQ2
        out 0x21, al
        mov al, 0x02
        out 0xA1, al
        mov al, 0x01                 ; ICW4: 8086 mode
        out 0x21, al
        out 0xA1, al
        mov al, 0xFE                 ; mask everything but IRQ0
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al

        mov al, 0x34                 ; PIT channel 0, lobyte/hibyte, mode 2
        out 0x43, al
        mov al, PIT_DIVISOR & 0xFF
        out 0x40, al
        mov al, PIT_DIVISOR >> 8
        out 0x40, al
        ret

irq_stub:
        push eax
        mov al, 0x20                 ; non-specific EOI (only IRQ0 is unmasked)
        out 0x20, al
        pop eax
        iret

exc_stub:                            ; a fault here is a bug: stop the vCPU
        cli
        hlt
        jmp exc_stub

align 8
gdt:
        dq 0
        dq 0x00CF9A000000FFFF        ; 0x08: flat 32-bit code
        dq 0x00CF92000000FFFF        ; 0x10: flat 32-bit data
gdt_desc:
        dw 3 * 8 - 1
        dd gdt
idt_desc:
        dw 48 * 8 - 1
        dd IDT

; Page 0 ends here (nasm refuses a negative count if the code outgrew it); page 1 is
; the status page, zeroes in the image so the loader clears it.
times 0x1000 - ($ - $$) db 0
times 0x1000 db 0
