;; ferry's hot-path kernels: XBZRLE encode/decode and zero-page scans, 16 bytes
;; at a time with WebAssembly SIMD (v128). Built into engine/wasm/kernels_wasm.ts by
;; `deno task build:wasm`; engine/wasm/kernels.ts is the JS side (memory layout,
;; copies in and out, error messages) and the pure-TS fallback.
;;
;; The memory is imported so that each instance (one per XBZRLE page cache, one
;; for the pool of stream buffers) gets its own, sized for its use. Every pointer
;; is a byte offset into it unless a kernel says otherwise. Callers leave at least
;; 16 readable bytes after any buffer passed in (the encoder's copy of a changed
;; run reads whole 16-byte vectors), and give the encoder an output buffer with 16
;; writable bytes of slack after `dlen`.
;;
;; A second, shared memory `ram` is a block of guest RAM (vm/ram.ts allocates
;; blocks as shared WebAssembly memories): `copy_digest` and `digest_copy` move a
;; page between it and the instance's own memory and digest it on the way, in one
;; pass. An instance bound to no block gets a one-page stand-in.
(module
  (import "env" "memory" (memory $mem 1))
  (import "env" "ram" (memory $ram 1 65536 shared))

  ;; Byte of the encoding at which xbzrle_decode found an error.
  (global $err_pos (export "err_pos") (mut i32) (i32.const 0))

;; Encodes page `cur` against `old` (`len` bytes each) into `dst` as QEMU's
  ;; XBZRLE: pairs of (unchanged run, changed run and its bytes), lengths as ULEB128
  ;; of at most two bytes, the trailing unchanged run left out. Returns the encoded
  ;; length, 0 for identical pages, or -1 when the encoding would not fit in `dlen`
  ;; bytes — with the same room checks as the TS encoder (2 bytes for a length,
  ;; whatever its size), so both give up at exactly the same point.
  ;;
  ;; Branch-light: each 64-byte block becomes a 64-bit mask of differing bytes,
  ;; and the run boundaries are the bits where that mask changes value; they are
  ;; visited with ctz. A block without any boundary costs no data-dependent branch.
  (func (export "xbzrle_encode")
    (param $old i32) (param $cur i32) (param $dst i32) (param $dlen i32) (param $len i32)
    (result i32)
    (local $b i32) (local $i i32) (local $d i32) (local $pos i32) (local $run i32)
    (local $width i32) (local $changed i32)
    (local $m i64) (local $t i64) (local $pa i32) (local $pb i32)
    (block $end
      (loop $block
        (br_if $end (i32.ge_u (local.get $b) (local.get $len)))
        (local.set $pa (i32.add (local.get $old) (local.get $b)))
        (local.set $pb (i32.add (local.get $cur) (local.get $b)))
        (if (i32.le_u (i32.add (local.get $b) (i32.const 64)) (local.get $len))
          (then
            ;; Inside an unchanged run, a block of equal bytes is skipped at once.
            (if (i32.eqz (local.get $changed))
              (then
                (if
                  (i8x16.all_true
                    (v128.and
                      (v128.and
                        (i8x16.eq (v128.load (local.get $pa)) (v128.load (local.get $pb)))
                        (i8x16.eq
                          (v128.load offset=16 (local.get $pa))
                          (v128.load offset=16 (local.get $pb))))
                      (v128.and
                        (i8x16.eq
                          (v128.load offset=32 (local.get $pa))
                          (v128.load offset=32 (local.get $pb)))
                        (i8x16.eq
                          (v128.load offset=48 (local.get $pa))
                          (v128.load offset=48 (local.get $pb))))))
                  (then
                    (local.set $b (i32.add (local.get $b) (i32.const 64)))
                    (br $block)))))
            ;; m: bit j set when byte b+j differs.
            (local.set $m
              (i64.xor
                (i64.or
                  (i64.or
                    (i64.extend_i32_u
                      (i8x16.bitmask
                        (i8x16.eq (v128.load (local.get $pa)) (v128.load (local.get $pb)))))
                    (i64.shl
                      (i64.extend_i32_u
                        (i8x16.bitmask
                          (i8x16.eq
                            (v128.load offset=16 (local.get $pa))
                            (v128.load offset=16 (local.get $pb)))))
                      (i64.const 16)))
                  (i64.or
                    (i64.shl
                      (i64.extend_i32_u
                        (i8x16.bitmask
                          (i8x16.eq
                            (v128.load offset=32 (local.get $pa))
                            (v128.load offset=32 (local.get $pb)))))
                      (i64.const 32))
                    (i64.shl
                      (i64.extend_i32_u
                        (i8x16.bitmask
                          (i8x16.eq
                            (v128.load offset=48 (local.get $pa))
                            (v128.load offset=48 (local.get $pb)))))
                      (i64.const 48))))
                (i64.const -1)))
            ;; t: bit j set when byte b+j starts a run (differs from the byte before).
            (local.set $t
              (i64.xor (local.get $m)
                (i64.or (i64.shl (local.get $m) (i64.const 1))
                  (i64.extend_i32_u (local.get $changed)))))
            (local.set $width (i32.const 64)))
          (else
            ;; Fewer than 64 bytes left: one byte per step.
            (local.set $m
              (i64.extend_i32_u
                (i32.ne (i32.load8_u (local.get $pa)) (i32.load8_u (local.get $pb)))))
            (local.set $t
              (i64.xor (local.get $m) (i64.extend_i32_u (local.get $changed))))
            (local.set $width (i32.const 1))))
        ;; The run boundaries inside this block, lowest first.
        (block $next
          (loop $boundary
            (br_if $next (i64.eqz (local.get $t)))
            (local.set $pos
              (i32.add (local.get $b) (i32.wrap_i64 (i64.ctz (local.get $t)))))
            (local.set $t (i64.and (local.get $t) (i64.sub (local.get $t) (i64.const 1))))
            (local.set $run (i32.sub (local.get $pos) (local.get $i)))
            (if (i32.eqz (local.get $changed))
              (then
                ;; A changed run starts: emit the unchanged run before it.
                (if (i32.gt_s (i32.add (local.get $d) (i32.const 2)) (local.get $dlen))
                  (then (return (i32.const -1))))
                (local.set $d (call $put_run (local.get $dst) (local.get $d) (local.get $run))))
              (else
                ;; An unchanged run starts: emit the changed run before it.
                (if (i32.gt_s (i32.add (i32.add (local.get $d) (i32.const 2)) (local.get $run))
                    (local.get $dlen))
                  (then (return (i32.const -1))))
                (local.set $d (call $put_run (local.get $dst) (local.get $d) (local.get $run)))
                (call $copy16 (i32.add (local.get $dst) (local.get $d))
                  (i32.add (local.get $cur) (local.get $i)) (local.get $run))
                (local.set $d (i32.add (local.get $d) (local.get $run)))))
            (local.set $i (local.get $pos))
            (local.set $changed (i32.xor (local.get $changed) (i32.const 1)))
            (br $boundary)))
        (local.set $b (i32.add (local.get $b) (local.get $width)))
        (br $block)))
    ;; A changed run reaching the end; a trailing unchanged run is left out.
    (if (local.get $changed)
      (then
        (local.set $run (i32.sub (local.get $len) (local.get $i)))
        (if (i32.gt_s (i32.add (i32.add (local.get $d) (i32.const 2)) (local.get $run))
            (local.get $dlen))
          (then (return (i32.const -1))))
        (local.set $d (call $put_run (local.get $dst) (local.get $d) (local.get $run)))
        (call $copy16 (i32.add (local.get $dst) (local.get $d))
          (i32.add (local.get $cur) (local.get $i)) (local.get $run))
        (local.set $d (i32.add (local.get $d) (local.get $run)))))
    (local.get $d))

  ;; Writes run length `n` at dst+d as ULEB128 of one or two bytes (the second
  ;; byte keeps the low 8 bits of n >> 7, as a Uint8Array store does); returns the
  ;; new d. Branch-free: the second byte is always written, callers leave room.
  (func $put_run (param $dst i32) (param $d i32) (param $n i32) (result i32)
    (local $long i32)
    (local.set $long (i32.ge_u (local.get $n) (i32.const 0x80)))
    (i32.store8 (i32.add (local.get $dst) (local.get $d))
      (i32.or (local.get $n) (i32.shl (local.get $long) (i32.const 7))))
    (i32.store8 offset=1 (i32.add (local.get $dst) (local.get $d))
      (i32.shr_u (local.get $n) (i32.const 7)))
    (i32.add (i32.add (local.get $d) (i32.const 1)) (local.get $long)))

  ;; Copies n > 0 bytes 16 at a time: writes up to 15 bytes past to+n, reads up to
  ;; 15 past from+n.
  (func $copy16 (param $to i32) (param $from i32) (param $n i32)
    (local $k i32)
    (loop $copy
      (v128.store (i32.add (local.get $to) (local.get $k))
        (v128.load (i32.add (local.get $from) (local.get $k))))
      (local.set $k (i32.add (local.get $k) (i32.const 16)))
      (br_if $copy (i32.lt_u (local.get $k) (local.get $n)))))

  ;; Applies an XBZRLE encoding `src[0..slen)` onto `page` (`len` bytes holding the
  ;; old contents) with exactly the TS decoder's checks, in the same order. When
  ;; `apply` is 0 it only validates. Returns the bytes of page covered, or a
  ;; negative error code with $err_pos set (kernels.ts maps codes to messages):
  ;; -1 ends inside a run pair, -2 run length cut off, -3 run length longer than
  ;; two bytes, -4 empty unchanged run, -5 output past len, -6 ends before a
  ;; changed run, -7 empty changed run, -8 changed run past the end.
  (func (export "xbzrle_decode")
    (param $src i32) (param $slen i32) (param $page i32) (param $len i32) (param $apply i32)
    (result i32)
    (local $i i32) (local $d i32) (local $count i32) (local $b0 i32) (local $b1 i32)
    (local $k i32) (local $from i32) (local $to i32)
    (block $end
      (loop $pairs
        (br_if $end (i32.ge_u (local.get $i) (local.get $slen)))
        (if (i32.lt_u (i32.sub (local.get $slen) (local.get $i)) (i32.const 2))
          (then (global.set $err_pos (local.get $i)) (return (i32.const -1))))
        ;; Unchanged run length.
        (local.set $b0 (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (if (i32.and (local.get $b0) (i32.const 0x80))
          (then
            (if (i32.ge_u (i32.add (local.get $i) (i32.const 1)) (local.get $slen))
              (then (global.set $err_pos (local.get $i)) (return (i32.const -2))))
            (local.set $b1 (i32.load8_u offset=1 (i32.add (local.get $src) (local.get $i))))
            (if (i32.and (local.get $b1) (i32.const 0x80))
              (then (global.set $err_pos (local.get $i)) (return (i32.const -3))))
            (local.set $count
              (i32.or (i32.and (local.get $b0) (i32.const 0x7f))
                (i32.shl (local.get $b1) (i32.const 7))))
            (if (i32.and (i32.ne (local.get $i) (i32.const 0)) (i32.eqz (local.get $count)))
              (then (global.set $err_pos (local.get $i)) (return (i32.const -4))))
            (local.set $i (i32.add (local.get $i) (i32.const 2))))
          (else
            (local.set $count (local.get $b0))
            (if (i32.and (i32.ne (local.get $i) (i32.const 0)) (i32.eqz (local.get $count)))
              (then (global.set $err_pos (local.get $i)) (return (i32.const -4))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))))
        (local.set $d (i32.add (local.get $d) (local.get $count)))
        (if (i32.gt_u (local.get $d) (local.get $len))
          (then (global.set $err_pos (local.get $i)) (return (i32.const -5))))
        (if (i32.lt_u (i32.sub (local.get $slen) (local.get $i)) (i32.const 2))
          (then (global.set $err_pos (local.get $i)) (return (i32.const -6))))
        ;; Changed run length.
        (local.set $b0 (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (if (i32.and (local.get $b0) (i32.const 0x80))
          (then
            (local.set $b1 (i32.load8_u offset=1 (i32.add (local.get $src) (local.get $i))))
            (if (i32.and (local.get $b1) (i32.const 0x80))
              (then (global.set $err_pos (local.get $i)) (return (i32.const -3))))
            (local.set $count
              (i32.or (i32.and (local.get $b0) (i32.const 0x7f))
                (i32.shl (local.get $b1) (i32.const 7))))
            (if (i32.eqz (local.get $count))
              (then (global.set $err_pos (local.get $i)) (return (i32.const -7))))
            (local.set $i (i32.add (local.get $i) (i32.const 2))))
          (else
            (local.set $count (local.get $b0))
            (if (i32.eqz (local.get $count))
              (then (global.set $err_pos (local.get $i)) (return (i32.const -7))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))))
        (if (i32.gt_u (i32.add (local.get $d) (local.get $count)) (local.get $len))
          (then (global.set $err_pos (local.get $i)) (return (i32.const -5))))
        (if (i32.gt_u (i32.add (local.get $i) (local.get $count)) (local.get $slen))
          (then (global.set $err_pos (local.get $i)) (return (i32.const -8))))
        (if (local.get $apply)
          (then
            ;; 16 bytes at a time, then the tail byte by byte: nothing is written
            ;; outside page[d..d+count).
            (local.set $from (i32.add (local.get $src) (local.get $i)))
            (local.set $to (i32.add (local.get $page) (local.get $d)))
            (local.set $k (i32.const 0))
            (block $bytes
              (loop $wide
                (br_if $bytes (i32.gt_u (i32.add (local.get $k) (i32.const 16)) (local.get $count)))
                (v128.store (i32.add (local.get $to) (local.get $k))
                  (v128.load (i32.add (local.get $from) (local.get $k))))
                (local.set $k (i32.add (local.get $k) (i32.const 16)))
                (br $wide)))
            (block $done
              (loop $byte
                (br_if $done (i32.ge_u (local.get $k) (local.get $count)))
                (i32.store8 (i32.add (local.get $to) (local.get $k))
                  (i32.load8_u (i32.add (local.get $from) (local.get $k))))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br $byte)))))
        (local.set $d (i32.add (local.get $d) (local.get $count)))
        (local.set $i (i32.add (local.get $i) (local.get $count)))
        (br $pairs)))
    (local.get $d))

  ;; 1 when `len` bytes at `p` are all zero, else 0; 64 bytes per step.
  (func $is_zero (export "is_zero") (param $p i32) (param $len i32) (result i32)
    (block $tail
      (loop $wide
        (br_if $tail (i32.lt_u (local.get $len) (i32.const 64)))
        (if
          (v128.any_true
            (v128.or
              (v128.or (v128.load (local.get $p)) (v128.load offset=16 (local.get $p)))
              (v128.or (v128.load offset=32 (local.get $p)) (v128.load offset=48 (local.get $p)))))
          (then (return (i32.const 0))))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (local.set $len (i32.sub (local.get $len) (i32.const 64)))
        (br $wide)))
    (block $done
      (loop $byte
        (br_if $done (i32.eqz (local.get $len)))
        (if (i32.load8_u (local.get $p)) (then (return (i32.const 0))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $len (i32.sub (local.get $len) (i32.const 1)))
        (br $byte)))
    (i32.const 1))

  ;; Index of the first of `npages` 4 KiB pages at `p` holding a non-zero byte, or
  ;; npages when all are zero.
  (func (export "first_nonzero_page") (param $p i32) (param $npages i32) (result i32)
    (local $i i32)
    (block $done
      (loop $page
        (br_if $done (i32.ge_u (local.get $i) (local.get $npages)))
        (br_if $done (i32.eqz (call $is_zero (local.get $p) (i32.const 4096))))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $page)))
    (local.get $i))
  ;; A 32-bit mixer on every lane: v ^= v >> s1; v *= m1; v ^= v >> s2; v *= m2;
  ;; v ^= v >> s3. A bijection that maps 0 to 0.
  (func $mix (param $v v128) (param $s1 i32) (param $m1 i32) (param $s2 i32) (param $m2 i32)
    (param $s3 i32) (result v128)
    (local.set $v (v128.xor (local.get $v) (i32x4.shr_u (local.get $v) (local.get $s1))))
    (local.set $v (i32x4.mul (local.get $v) (i32x4.splat (local.get $m1))))
    (local.set $v (v128.xor (local.get $v) (i32x4.shr_u (local.get $v) (local.get $s2))))
    (local.set $v (i32x4.mul (local.get $v) (i32x4.splat (local.get $m2))))
    (v128.xor (local.get $v) (i32x4.shr_u (local.get $v) (local.get $s3))))

  ;; ferry's content digest (engine/wasm/kernels.ts, digestTs, is its reference):
  ;; in every 64-byte step, each 16-byte slot k (0-3) adds its four 32-bit
  ;; little-endian lanes to its own Fletcher pair (a_k += v; b_k += a_k), four
  ;; independent chains; $fold then passes each of the eight sums through its own
  ;; non-linear mixer (so that no change of one sum can cancel a change of
  ;; another), xors them, folds the four lanes with rotations and finishes with
  ;; murmur3's fmix32. All-zero input digests to 0. Every one-byte change changes
  ;; the digest; it detects accidental damage as a CRC-32 does and is not a
  ;; cryptographic hash. Lengths are multiples of 64.
  (func $fold (param $a0 v128) (param $b0 v128) (param $a1 v128) (param $b1 v128)
    (param $a2 v128) (param $b2 v128) (param $a3 v128) (param $b3 v128) (result i32)
    (local $x v128) (local $h i32)
    (local.set $x
      (v128.xor
        (v128.xor
          (v128.xor
            (call $mix (local.get $a0)
              (i32.const 16) (i32.const 0x85ebca6b) (i32.const 13) (i32.const 0xc2b2ae35)
              (i32.const 16))
            (call $mix (local.get $b0)
              (i32.const 16) (i32.const 0x7feb352d) (i32.const 15) (i32.const 0x846ca68b)
              (i32.const 16)))
          (v128.xor
            (call $mix (local.get $a1)
              (i32.const 17) (i32.const 0xed5ad4bb) (i32.const 11) (i32.const 0xac4c1b51)
              (i32.const 15))
            (call $mix (local.get $b1)
              (i32.const 15) (i32.const 0x2c1b3c6d) (i32.const 12) (i32.const 0x297a2d39)
              (i32.const 15))))
        (v128.xor
          (v128.xor
            (call $mix (local.get $a2)
              (i32.const 16) (i32.const 0x21f0aaad) (i32.const 15) (i32.const 0x735a2d97)
              (i32.const 15))
            (call $mix (local.get $b2)
              (i32.const 15) (i32.const 0xd168aaad) (i32.const 15) (i32.const 0xaf723597)
              (i32.const 15)))
          (v128.xor
            (call $mix (local.get $a3)
              (i32.const 16) (i32.const 0x45d9f3b) (i32.const 16) (i32.const 0x45d9f3b)
              (i32.const 16))
            (call $mix (local.get $b3)
              (i32.const 16) (i32.const 0x9e3779b1) (i32.const 15) (i32.const 0x85ebca77)
              (i32.const 16))))))
    (local.set $h
      (i32.xor
        (i32.xor
          (i32x4.extract_lane 0 (local.get $x))
          (i32.rotl (i32x4.extract_lane 1 (local.get $x)) (i32.const 8)))
        (i32.xor
          (i32.rotl (i32x4.extract_lane 2 (local.get $x)) (i32.const 16))
          (i32.rotl (i32x4.extract_lane 3 (local.get $x)) (i32.const 24)))))
    (local.set $h (i32.xor (local.get $h) (i32.shr_u (local.get $h) (i32.const 16))))
    (local.set $h (i32.mul (local.get $h) (i32.const 0x85ebca6b)))
    (local.set $h (i32.xor (local.get $h) (i32.shr_u (local.get $h) (i32.const 13))))
    (local.set $h (i32.mul (local.get $h) (i32.const 0xc2b2ae35)))
    (i32.xor (local.get $h) (i32.shr_u (local.get $h) (i32.const 16))))

  ;; The digest of `len` bytes at `p` of the instance's own memory.
  (func (export "digest") (param $p i32) (param $len i32) (result i32)
    (local $a0 v128) (local $b0 v128) (local $a1 v128) (local $b1 v128)
    (local $a2 v128) (local $b2 v128) (local $a3 v128) (local $b3 v128)
    (block $done
      (loop $step
        (br_if $done (i32.lt_u (local.get $len) (i32.const 64)))
        (local.set $a0 (i32x4.add (local.get $a0) (v128.load $mem (local.get $p))))
        (local.set $a1 (i32x4.add (local.get $a1) (v128.load $mem offset=16 (local.get $p))))
        (local.set $a2 (i32x4.add (local.get $a2) (v128.load $mem offset=32 (local.get $p))))
        (local.set $a3 (i32x4.add (local.get $a3) (v128.load $mem offset=48 (local.get $p))))
        (local.set $b0 (i32x4.add (local.get $b0) (local.get $a0)))
        (local.set $b1 (i32x4.add (local.get $b1) (local.get $a1)))
        (local.set $b2 (i32x4.add (local.get $b2) (local.get $a2)))
        (local.set $b3 (i32x4.add (local.get $b3) (local.get $a3)))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (local.set $len (i32.sub (local.get $len) (i32.const 64)))
        (br $step)))
    (call $fold (local.get $a0) (local.get $b0) (local.get $a1) (local.get $b1)
      (local.get $a2) (local.get $b2) (local.get $a3) (local.get $b3)))

  ;; Copies `len` bytes from `src` of the guest RAM to `dst` of the instance's own
  ;; memory (a page into a stream buffer); returns their digest.
  (func (export "copy_digest") (param $src i32) (param $dst i32) (param $len i32) (result i32)
    (local $v v128) (local $a0 v128) (local $b0 v128) (local $a1 v128)
    (local $b1 v128) (local $a2 v128) (local $b2 v128) (local $a3 v128) (local $b3 v128)
    (block $done
      (loop $step
        (br_if $done (i32.lt_u (local.get $len) (i32.const 64)))
        (local.set $v (v128.load $ram (local.get $src)))
        (v128.store $mem (local.get $dst) (local.get $v))
        (local.set $a0 (i32x4.add (local.get $a0) (local.get $v)))
        (local.set $v (v128.load $ram offset=16 (local.get $src)))
        (v128.store $mem offset=16 (local.get $dst) (local.get $v))
        (local.set $a1 (i32x4.add (local.get $a1) (local.get $v)))
        (local.set $v (v128.load $ram offset=32 (local.get $src)))
        (v128.store $mem offset=32 (local.get $dst) (local.get $v))
        (local.set $a2 (i32x4.add (local.get $a2) (local.get $v)))
        (local.set $v (v128.load $ram offset=48 (local.get $src)))
        (v128.store $mem offset=48 (local.get $dst) (local.get $v))
        (local.set $a3 (i32x4.add (local.get $a3) (local.get $v)))
        (local.set $b0 (i32x4.add (local.get $b0) (local.get $a0)))
        (local.set $b1 (i32x4.add (local.get $b1) (local.get $a1)))
        (local.set $b2 (i32x4.add (local.get $b2) (local.get $a2)))
        (local.set $b3 (i32x4.add (local.get $b3) (local.get $a3)))
        (local.set $src (i32.add (local.get $src) (i32.const 64)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 64)))
        (local.set $len (i32.sub (local.get $len) (i32.const 64)))
        (br $step)))
    (call $fold (local.get $a0) (local.get $b0) (local.get $a1) (local.get $b1)
      (local.get $a2) (local.get $b2) (local.get $a3) (local.get $b3)))

  ;; Copies `len` bytes from `src` of the instance's own memory to `dst` of the
  ;; guest RAM (a page out of a stream buffer); returns their digest.
  (func (export "digest_copy") (param $src i32) (param $dst i32) (param $len i32) (result i32)
    (local $v v128) (local $a0 v128) (local $b0 v128) (local $a1 v128)
    (local $b1 v128) (local $a2 v128) (local $b2 v128) (local $a3 v128) (local $b3 v128)
    (block $done
      (loop $step
        (br_if $done (i32.lt_u (local.get $len) (i32.const 64)))
        (local.set $v (v128.load $mem (local.get $src)))
        (v128.store $ram (local.get $dst) (local.get $v))
        (local.set $a0 (i32x4.add (local.get $a0) (local.get $v)))
        (local.set $v (v128.load $mem offset=16 (local.get $src)))
        (v128.store $ram offset=16 (local.get $dst) (local.get $v))
        (local.set $a1 (i32x4.add (local.get $a1) (local.get $v)))
        (local.set $v (v128.load $mem offset=32 (local.get $src)))
        (v128.store $ram offset=32 (local.get $dst) (local.get $v))
        (local.set $a2 (i32x4.add (local.get $a2) (local.get $v)))
        (local.set $v (v128.load $mem offset=48 (local.get $src)))
        (v128.store $ram offset=48 (local.get $dst) (local.get $v))
        (local.set $a3 (i32x4.add (local.get $a3) (local.get $v)))
        (local.set $b0 (i32x4.add (local.get $b0) (local.get $a0)))
        (local.set $b1 (i32x4.add (local.get $b1) (local.get $a1)))
        (local.set $b2 (i32x4.add (local.get $b2) (local.get $a2)))
        (local.set $b3 (i32x4.add (local.get $b3) (local.get $a3)))
        (local.set $src (i32.add (local.get $src) (i32.const 64)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 64)))
        (local.set $len (i32.sub (local.get $len) (i32.const 64)))
        (br $step)))
    (call $fold (local.get $a0) (local.get $b0) (local.get $a1) (local.get $b1)
      (local.get $a2) (local.get $b2) (local.get $a3) (local.get $b3)))
)
