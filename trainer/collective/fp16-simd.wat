;; fp16 <-> fp32 kernels for fp16 on the wire (trainer/collective/fp16-simd.ts loads the compiled bytes).
;; Same rules as fp16.ts: encode rounds to nearest even (fast path for |x| in [2^-14, 65536), $enc1 for the rest),
;; decode re-biases normal halves ($dec1 for zero, subnormal, infinity, NaN -> 0x7fc00000). The SIMD loops handle
;; eight elements a step and redo a step element by element when any of its lanes leaves the fast path; the
;; vector snippets for encode and decode are written out in full where used (no calls in the hot loops).
(module
  (memory (export "memory") 8)
  ;; Regions: A = [0, 262144) 65536 float32 (or their bits); H = [262144, 393216) 65536 halves.

  ;; float32 bits -> half bits, round to nearest even (as fp16.ts floatToHalf / halfSlow)
  (func $enc1 (param $x i32) (result i32)
    (local $v i32) (local $sign i32) (local $e i32) (local $m i32) (local $full i32) (local $shift i32)
    (local $h i32) (local $rem i32) (local $half i32)
    (local.set $sign (i32.and (i32.shr_u (local.get $x) (i32.const 16)) (i32.const 0x8000)))
    (local.set $v (i32.and (local.get $x) (i32.const 0x7fffffff)))
    (if (i32.lt_u (i32.sub (local.get $v) (i32.const 0x38800000)) (i32.const 0x0f000000))
      (then (return (i32.or (local.get $sign)
        (i32.shr_u (i32.add (i32.add (i32.sub (local.get $v) (i32.const 0x38000000)) (i32.const 0xfff))
                            (i32.and (i32.shr_u (local.get $v) (i32.const 13)) (i32.const 1)))
                   (i32.const 13))))))
    (local.set $e (i32.shr_u (local.get $v) (i32.const 23)))
    (local.set $m (i32.and (local.get $x) (i32.const 0x7fffff)))
    (if (i32.ge_u (local.get $e) (i32.const 143))
      (then (return (i32.or (local.get $sign)
        (select (i32.const 0x7e00) (i32.const 0x7c00)
          (i32.and (i32.eq (local.get $e) (i32.const 255)) (i32.ne (local.get $m) (i32.const 0))))))))
    (if (i32.ge_u (local.get $e) (i32.const 102))
      (then
        (local.set $full (i32.or (local.get $m) (i32.const 0x800000)))
        (local.set $shift (i32.sub (i32.const 126) (local.get $e)))
        (local.set $h (i32.shr_u (local.get $full) (local.get $shift)))
        (local.set $rem (i32.and (local.get $full) (i32.sub (i32.shl (i32.const 1) (local.get $shift)) (i32.const 1))))
        (local.set $half (i32.shl (i32.const 1) (i32.sub (local.get $shift) (i32.const 1))))
        (if (i32.or (i32.gt_u (local.get $rem) (local.get $half))
                    (i32.and (i32.eq (local.get $rem) (local.get $half)) (i32.and (local.get $h) (i32.const 1))))
          (then (local.set $h (i32.add (local.get $h) (i32.const 1)))))
        (return (i32.or (local.get $sign) (local.get $h)))))
    (local.get $sign))

  ;; half bits -> float32 bits (as fp16.ts halfTable: NaN is 0x7fc00000)
  (func $dec1 (param $h i32) (result i32)
    (local $e i32) (local $m i32) (local $sign i32)
    (local.set $e (i32.and (local.get $h) (i32.const 0x7c00)))
    (local.set $m (i32.and (local.get $h) (i32.const 0x3ff)))
    (local.set $sign (i32.shl (i32.and (local.get $h) (i32.const 0x8000)) (i32.const 16)))
    (if (i32.eqz (local.get $e))
      (then (return (i32.or (local.get $sign)
        (i32.reinterpret_f32 (f32.mul (f32.convert_i32_u (local.get $m)) (f32.const 0x1p-24)))))))
    (if (i32.eq (local.get $e) (i32.const 0x7c00))
      (then (return (select (i32.const 0x7fc00000) (i32.or (local.get $sign) (i32.const 0x7f800000)) (local.get $m)))))
    (i32.or (local.get $sign) (i32.shl (i32.add (i32.and (local.get $h) (i32.const 0x7fff)) (i32.const 0x1c000)) (i32.const 13))))

  ;; H[i] = half(A[i]) for i < n
  (func (export "encode") (param $n i32)
    (local $i i32) (local $end8 i32) (local $x v128) (local $y v128) (local $r v128) (local $s v128) (local $ok v128) (local $ok2 v128) (local $t v128)
    (local.set $end8 (i32.and (local.get $n) (i32.const -8)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $end8)))
      (local.set $x (v128.load (i32.shl (local.get $i) (i32.const 2))))
      (local.set $y (v128.load offset=16 (i32.shl (local.get $i) (i32.const 2))))
      
    (local.set $t (v128.and (local.get $x) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
    (local.set $r (v128.or
      (v128.and (i32x4.shr_u (local.get $x) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000))
      (i32x4.shr_u
        (i32x4.add (i32x4.add (i32x4.sub (local.get $t) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000)) (v128.const i32x4 0xfff 0xfff 0xfff 0xfff))
                   (v128.and (i32x4.shr_u (local.get $t) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
        (i32.const 13))))
    (local.set $ok (i32x4.lt_u (i32x4.sub (local.get $t) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000)) (v128.const i32x4 0x0f000000 0x0f000000 0x0f000000 0x0f000000)))
    ;; zero: the sign alone
    (local.set $t (i32x4.eq (local.get $t) (v128.const i32x4 0 0 0 0)))
    (local.set $r (v128.bitselect (v128.and (i32x4.shr_u (local.get $x) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (local.get $r) (local.get $t)))
    (local.set $ok (v128.or (local.get $ok) (local.get $t)))
      
    (local.set $t (v128.and (local.get $y) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
    (local.set $s (v128.or
      (v128.and (i32x4.shr_u (local.get $y) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000))
      (i32x4.shr_u
        (i32x4.add (i32x4.add (i32x4.sub (local.get $t) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000)) (v128.const i32x4 0xfff 0xfff 0xfff 0xfff))
                   (v128.and (i32x4.shr_u (local.get $t) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
        (i32.const 13))))
    (local.set $ok2 (i32x4.lt_u (i32x4.sub (local.get $t) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000)) (v128.const i32x4 0x0f000000 0x0f000000 0x0f000000 0x0f000000)))
    ;; zero: the sign alone
    (local.set $t (i32x4.eq (local.get $t) (v128.const i32x4 0 0 0 0)))
    (local.set $s (v128.bitselect (v128.and (i32x4.shr_u (local.get $y) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (local.get $s) (local.get $t)))
    (local.set $ok2 (v128.or (local.get $ok2) (local.get $t)))
      (if (i32x4.all_true (v128.and (local.get $ok) (local.get $ok2)))
        (then (v128.store (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1))) (i16x8.narrow_i32x4_u (local.get $r) (local.get $s))))
        (else (call $encodeScalar (local.get $i) (i32.add (local.get $i) (i32.const 8)))))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br $next)))
    (call $encodeScalar (local.get $end8) (local.get $n)))

  (func $encodeScalar (param $i i32) (param $end i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
      (i32.store16 (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1)))
        (call $enc1 (i32.load (i32.shl (local.get $i) (i32.const 2)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))

  ;; A[i] = bits of float(H[i]) for i < n
  (func (export "decode") (param $n i32)
    (local $i i32) (local $end8 i32) (local $hv v128) (local $lo v128) (local $hi v128) (local $r v128) (local $s v128) (local $ok v128) (local $ok2 v128) (local $t v128)
    (local.set $end8 (i32.and (local.get $n) (i32.const -8)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $end8)))
      (local.set $hv (v128.load (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1)))))
      (local.set $lo (i32x4.extend_low_i16x8_u (local.get $hv)))
      (local.set $hi (i32x4.extend_high_i16x8_u (local.get $hv)))
      
    (local.set $t (v128.and (local.get $lo) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
    (local.set $ok (v128.and (i32x4.ne (local.get $t) (v128.const i32x4 0 0 0 0)) (i32x4.ne (local.get $t) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
    (local.set $r (v128.bitselect
      (v128.or (i32x4.shl (v128.and (local.get $lo) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
               (i32x4.shl (i32x4.add (v128.and (local.get $lo) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0x1c000 0x1c000 0x1c000 0x1c000)) (i32.const 13)))
      (i32x4.shl (v128.and (local.get $lo) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
      (local.get $ok)))
    (local.set $ok (v128.or (local.get $ok) (i32x4.eq (v128.and (local.get $lo) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0 0 0 0))))
      
    (local.set $t (v128.and (local.get $hi) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
    (local.set $ok2 (v128.and (i32x4.ne (local.get $t) (v128.const i32x4 0 0 0 0)) (i32x4.ne (local.get $t) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
    (local.set $s (v128.bitselect
      (v128.or (i32x4.shl (v128.and (local.get $hi) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
               (i32x4.shl (i32x4.add (v128.and (local.get $hi) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0x1c000 0x1c000 0x1c000 0x1c000)) (i32.const 13)))
      (i32x4.shl (v128.and (local.get $hi) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
      (local.get $ok2)))
    (local.set $ok2 (v128.or (local.get $ok2) (i32x4.eq (v128.and (local.get $hi) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0 0 0 0))))
      (if (i32x4.all_true (v128.and (local.get $ok) (local.get $ok2)))
        (then
          (v128.store (i32.shl (local.get $i) (i32.const 2)) (local.get $r))
          (v128.store offset=16 (i32.shl (local.get $i) (i32.const 2)) (local.get $s)))
        (else (call $decodeScalar (local.get $i) (i32.add (local.get $i) (i32.const 8)))))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br $next)))
    (call $decodeScalar (local.get $end8) (local.get $n)))

  (func $decodeScalar (param $i i32) (param $end i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
      (i32.store (i32.shl (local.get $i) (i32.const 2))
        (call $dec1 (i32.load16_u (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))

  ;; H[i] = half(fp32(float(H[i]) + A[i])); with $keep, also A[i] = bits of float(H[i]) (the new H[i])
  (func (export "addHalf") (param $n i32) (param $keep i32)
    (local $i i32) (local $end8 i32) (local $hv v128) (local $lo v128) (local $hi v128) (local $r v128) (local $s v128)
    (local $ok v128) (local $ok2 v128) (local $ok3 v128) (local $ok4 v128) (local $t v128) (local $el v128) (local $eh v128) (local $a i32)
    (local.set $end8 (i32.and (local.get $n) (i32.const -8)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $end8)))
      (local.set $a (i32.shl (local.get $i) (i32.const 2)))
      (local.set $hv (v128.load (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1)))))
      (local.set $lo (i32x4.extend_low_i16x8_u (local.get $hv)))
      (local.set $hi (i32x4.extend_high_i16x8_u (local.get $hv)))
      
    (local.set $t (v128.and (local.get $lo) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
    (local.set $ok (v128.and (i32x4.ne (local.get $t) (v128.const i32x4 0 0 0 0)) (i32x4.ne (local.get $t) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
    (local.set $r (v128.bitselect
      (v128.or (i32x4.shl (v128.and (local.get $lo) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
               (i32x4.shl (i32x4.add (v128.and (local.get $lo) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0x1c000 0x1c000 0x1c000 0x1c000)) (i32.const 13)))
      (i32x4.shl (v128.and (local.get $lo) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
      (local.get $ok)))
    (local.set $ok (v128.or (local.get $ok) (i32x4.eq (v128.and (local.get $lo) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0 0 0 0))))
      
    (local.set $t (v128.and (local.get $hi) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
    (local.set $ok2 (v128.and (i32x4.ne (local.get $t) (v128.const i32x4 0 0 0 0)) (i32x4.ne (local.get $t) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
    (local.set $s (v128.bitselect
      (v128.or (i32x4.shl (v128.and (local.get $hi) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
               (i32x4.shl (i32x4.add (v128.and (local.get $hi) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0x1c000 0x1c000 0x1c000 0x1c000)) (i32.const 13)))
      (i32x4.shl (v128.and (local.get $hi) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
      (local.get $ok2)))
    (local.set $ok2 (v128.or (local.get $ok2) (i32x4.eq (v128.and (local.get $hi) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0 0 0 0))))
      (local.set $r (f32x4.add (local.get $r) (v128.load (local.get $a))))
      (local.set $s (f32x4.add (local.get $s) (v128.load offset=16 (local.get $a))))
      
    (local.set $t (v128.and (local.get $r) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
    (local.set $el (v128.or
      (v128.and (i32x4.shr_u (local.get $r) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000))
      (i32x4.shr_u
        (i32x4.add (i32x4.add (i32x4.sub (local.get $t) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000)) (v128.const i32x4 0xfff 0xfff 0xfff 0xfff))
                   (v128.and (i32x4.shr_u (local.get $t) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
        (i32.const 13))))
    (local.set $ok3 (i32x4.lt_u (i32x4.sub (local.get $t) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000)) (v128.const i32x4 0x0f000000 0x0f000000 0x0f000000 0x0f000000)))
    ;; zero: the sign alone
    (local.set $t (i32x4.eq (local.get $t) (v128.const i32x4 0 0 0 0)))
    (local.set $el (v128.bitselect (v128.and (i32x4.shr_u (local.get $r) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (local.get $el) (local.get $t)))
    (local.set $ok3 (v128.or (local.get $ok3) (local.get $t)))
      
    (local.set $t (v128.and (local.get $s) (v128.const i32x4 0x7fffffff 0x7fffffff 0x7fffffff 0x7fffffff)))
    (local.set $eh (v128.or
      (v128.and (i32x4.shr_u (local.get $s) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000))
      (i32x4.shr_u
        (i32x4.add (i32x4.add (i32x4.sub (local.get $t) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000)) (v128.const i32x4 0xfff 0xfff 0xfff 0xfff))
                   (v128.and (i32x4.shr_u (local.get $t) (i32.const 13)) (v128.const i32x4 1 1 1 1)))
        (i32.const 13))))
    (local.set $ok4 (i32x4.lt_u (i32x4.sub (local.get $t) (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000)) (v128.const i32x4 0x0f000000 0x0f000000 0x0f000000 0x0f000000)))
    ;; zero: the sign alone
    (local.set $t (i32x4.eq (local.get $t) (v128.const i32x4 0 0 0 0)))
    (local.set $eh (v128.bitselect (v128.and (i32x4.shr_u (local.get $s) (i32.const 16)) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (local.get $eh) (local.get $t)))
    (local.set $ok4 (v128.or (local.get $ok4) (local.get $t)))
      (local.set $ok (v128.and (v128.and (local.get $ok) (local.get $ok2)) (v128.and (local.get $ok3) (local.get $ok4))))
      (if (local.get $keep)
        (then
          
    (local.set $t (v128.and (local.get $el) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
    (local.set $ok3 (v128.and (i32x4.ne (local.get $t) (v128.const i32x4 0 0 0 0)) (i32x4.ne (local.get $t) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
    (local.set $r (v128.bitselect
      (v128.or (i32x4.shl (v128.and (local.get $el) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
               (i32x4.shl (i32x4.add (v128.and (local.get $el) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0x1c000 0x1c000 0x1c000 0x1c000)) (i32.const 13)))
      (i32x4.shl (v128.and (local.get $el) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
      (local.get $ok3)))
    (local.set $ok3 (v128.or (local.get $ok3) (i32x4.eq (v128.and (local.get $el) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0 0 0 0))))
          
    (local.set $t (v128.and (local.get $eh) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00)))
    (local.set $ok4 (v128.and (i32x4.ne (local.get $t) (v128.const i32x4 0 0 0 0)) (i32x4.ne (local.get $t) (v128.const i32x4 0x7c00 0x7c00 0x7c00 0x7c00))))
    (local.set $s (v128.bitselect
      (v128.or (i32x4.shl (v128.and (local.get $eh) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
               (i32x4.shl (i32x4.add (v128.and (local.get $eh) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0x1c000 0x1c000 0x1c000 0x1c000)) (i32.const 13)))
      (i32x4.shl (v128.and (local.get $eh) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))
      (local.get $ok4)))
    (local.set $ok4 (v128.or (local.get $ok4) (i32x4.eq (v128.and (local.get $eh) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (v128.const i32x4 0 0 0 0))))
          (local.set $ok (v128.and (local.get $ok) (v128.and (local.get $ok3) (local.get $ok4))))))
      (if (i32x4.all_true (local.get $ok))
        (then
          (v128.store (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1))) (i16x8.narrow_i32x4_u (local.get $el) (local.get $eh)))
          (if (local.get $keep) (then
            (v128.store (local.get $a) (local.get $r))
            (v128.store offset=16 (local.get $a) (local.get $s)))))
        (else (call $addHalfScalar (local.get $i) (i32.add (local.get $i) (i32.const 8)) (local.get $keep))))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br $next)))
    (call $addHalfScalar (local.get $end8) (local.get $n) (local.get $keep)))

  (func $addHalfScalar (param $i i32) (param $end i32) (param $keep i32)
    (local $o i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $o (call $enc1 (i32.reinterpret_f32 (f32.add
        (f32.reinterpret_i32 (call $dec1 (i32.load16_u (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1))))))
        (f32.load (i32.shl (local.get $i) (i32.const 2)))))))
      (i32.store16 (i32.add (i32.const 262144) (i32.shl (local.get $i) (i32.const 1))) (local.get $o))
      (if (local.get $keep) (then (i32.store (i32.shl (local.get $i) (i32.const 2)) (call $dec1 (local.get $o)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
)
