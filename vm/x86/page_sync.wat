;; The x86 guest's page sync (vm/x86/page_sync.ts): v86 keeps no dirty log, so
;; the emulator's thread finds the pages it wrote by comparing its RAM with the
;; copy the migration sends from. Assembled by tools/build_wasm.ts into
;; page_sync_wasm.ts (`deno task build:wasm`).
(module
  (import "env" "emulator" (memory $emu 1))
  (import "env" "ram" (memory $ram 1 65536 shared))

  ;; Compares `npages` 4 KiB pages at `src` of the emulator's memory with those
  ;; at `dst` of the shared copy, 64 bytes at a time. The first page that differs
  ;; is copied over and its index returned; npages when every page is equal. The
  ;; caller resumes after the page returned.
  (func (export "diff_copy") (param $src i32) (param $dst i32) (param $npages i32)
    (result i32)
    (local $i i32) (local $k i32)
    (loop $page
      (if (i32.ge_u (local.get $i) (local.get $npages)) (then (return (local.get $npages))))
      (local.set $k (i32.const 0))
      (block $differs
        (loop $compare
          (br_if $differs
            (v128.any_true
              (v128.or
                (v128.or
                  (v128.xor
                    (v128.load $emu (i32.add (local.get $src) (local.get $k)))
                    (v128.load $ram (i32.add (local.get $dst) (local.get $k))))
                  (v128.xor
                    (v128.load $emu offset=16 (i32.add (local.get $src) (local.get $k)))
                    (v128.load $ram offset=16 (i32.add (local.get $dst) (local.get $k)))))
                (v128.or
                  (v128.xor
                    (v128.load $emu offset=32 (i32.add (local.get $src) (local.get $k)))
                    (v128.load $ram offset=32 (i32.add (local.get $dst) (local.get $k))))
                  (v128.xor
                    (v128.load $emu offset=48 (i32.add (local.get $src) (local.get $k)))
                    (v128.load $ram offset=48 (i32.add (local.get $dst) (local.get $k))))))))
          (local.set $k (i32.add (local.get $k) (i32.const 64)))
          (br_if $compare (i32.lt_u (local.get $k) (i32.const 4096))))
        (local.set $src (i32.add (local.get $src) (i32.const 4096)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4096)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $page))
      ;; This page differs: copy all of it (the bytes before $k are equal, but a
      ;; whole-page copy keeps the loop simple and costs little next to the scan).
      (local.set $k (i32.const 0))
      (loop $copy
        (v128.store $ram (i32.add (local.get $dst) (local.get $k))
          (v128.load $emu (i32.add (local.get $src) (local.get $k))))
        (v128.store $ram offset=16 (i32.add (local.get $dst) (local.get $k))
          (v128.load $emu offset=16 (i32.add (local.get $src) (local.get $k))))
        (v128.store $ram offset=32 (i32.add (local.get $dst) (local.get $k))
          (v128.load $emu offset=32 (i32.add (local.get $src) (local.get $k))))
        (v128.store $ram offset=48 (i32.add (local.get $dst) (local.get $k))
          (v128.load $emu offset=48 (i32.add (local.get $src) (local.get $k))))
        (local.set $k (i32.add (local.get $k) (i32.const 64)))
        (br_if $copy (i32.lt_u (local.get $k) (i32.const 4096))))
      (return (local.get $i)))
    (unreachable))
)
