#include "common/malloc_tuning.h"

#include <malloc.h>

namespace ttt {

void tune_malloc_for_tensors() {
#ifdef M_MMAP_THRESHOLD
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum on 64-bit systems
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

}  // namespace ttt
