// Host memory: glibc's malloc tuned for a training loop that frees and allocates the same large tensors
// every step.
//
// By default glibc serves blocks above a threshold that starts at 128 KiB (and adapts up to 32 MiB) with
// mmap and gives them back with munmap on free, and trims the top of its heap whenever 128 KiB or more is
// free there: every step then takes its activations, gradients and bf16 weight copies as fresh pages,
// which the kernel zeroes one page fault at a time (clear_page was 8% of a bf16 training step on the
// CPU). keep_freed_host_memory() serves blocks up to 32 MiB (glibc's largest threshold) from the heap and
// keeps freed memory in the process for the next step: d_model 512 tiny recipe, 2 threads, page faults
// 2.59M -> 1.40M and bf16 +14% tokens/s (docs/benchmarks.md). The peak is unchanged; what was freed is
// reused instead of returned. Larger blocks still come from mmap.
#pragma once

namespace moetrain::util {

// Applies the tuning unless the user chose glibc's settings (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
// MALLOC_TOP_PAD_ set) or MOETRAIN_HOST_MALLOC=system; returns whether it applied it. MOETRAIN_HOST_MALLOC
// unset or "keep" applies it; any other value throws std::invalid_argument naming it. Call it first in main.
bool keep_freed_host_memory();

}  // namespace moetrain::util
