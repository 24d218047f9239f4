//! Incompressible pseudo-random file data (xorshift64*), shared by the workload harness and
//! the engine micro-benchmarks (`benches/engine.rs` includes this file by path): no sparse,
//! compression or dedup shortcut can make a copy of it cheaper than a real one.

use std::io::Write;

/// Write `len` bytes of the xorshift64* stream started at `seed` to `out`, 1 MiB at a time.
pub fn write_stream(out: &mut impl Write, len: u64, seed: u64) -> std::io::Result<()> {
    let mut state = seed;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}
