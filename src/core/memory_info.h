// What the kernel says about this process's memory and the machine's (Linux /proc; every figure is -1 where
// it is not available). One reader for the pipelines' memory estimates, `bench`'s RSS lines and the memory
// benches and tests.
#pragma once

namespace meshdit {

struct ProcessMemory {
  double file_mb = -1;  // RssFile: resident file-backed pages (memory-mapped weights that were touched)
  double anon_mb = -1;  // RssAnon: resident anonymous pages (copies, activations)
  double peak_mb = -1;  // VmHWM: the peak resident set since start or since reset_peak_memory()
};
ProcessMemory process_memory();

// Restarts VmHWM at the current resident set (writes 5 to /proc/self/clear_refs), so a bench can measure the
// peak of one stage. False when the kernel refuses.
bool reset_peak_memory();

// MemAvailable of /proc/meminfo in bytes: what can be allocated without swapping.
double available_memory_bytes();

}  // namespace meshdit
