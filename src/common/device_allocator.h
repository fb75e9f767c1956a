// PyTorch's CUDA caching allocator, by default, reserves fixed-size segments and can only reuse
// a freed block for a request that fits in it: a step whose tensors change size from phase to
// phase (a span's graph, then a chunk's) leaves reserved memory it cannot use. 3B ttt-e2e
// training at 128K ran out of memory on an 80 GB H100 with 1.3 GiB reserved but unallocated,
// and fit with segments that grow in place (expandable_segments; docs/BENCHMARKS.md).
#pragma once

namespace ttt {

// Asks for expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True) unless
// PYTORCH_CUDA_ALLOC_CONF or PYTORCH_ALLOC_CONF already says how to allocate: the user's
// setting wins. The allocator reads its settings once, when CUDA first allocates: call this at
// program start. Returns whether it set them.
bool prefer_expandable_device_segments();

// Whether PYTORCH_CUDA_ALLOC_CONF, the setting PyTorch reads first, asks for expandable
// segments (as prefer_expandable_device_segments does).
bool expandable_device_segments_asked();

}  // namespace ttt
