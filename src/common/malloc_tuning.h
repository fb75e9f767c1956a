// glibc's allocator serves every block above its mmap threshold (128 KiB at first, adapting
// up to 32 MiB) with a fresh mmap, and gives freed heap memory back to the kernel eagerly.
// Tensor code allocates and frees multi-megabyte buffers per op, so each op then pays page
// faults and zeroing in the kernel: full-attention evaluation at 8K tokens spent a third of
// its time there and ran 7x slower (docs/BENCHMARKS.md). This keeps such blocks in the heap
// for reuse. The peak resident memory is unchanged; freed memory is kept, not returned.
#pragma once

namespace ttt {

// Call once at program start, before large allocations.
void tune_malloc_for_tensors();

}  // namespace ttt
