#include "core/memory_info.h"

#include <fstream>
#include <string>

namespace meshdit {

ProcessMemory process_memory() {
  ProcessMemory m;
  std::ifstream f("/proc/self/status");
  std::string key;
  double kb = 0;
  while (f >> key) {
    double* field = key == "RssFile:"   ? &m.file_mb
                    : key == "RssAnon:" ? &m.anon_mb
                    : key == "VmHWM:"   ? &m.peak_mb
                                        : nullptr;
    if (field && f >> kb) *field = kb / 1024.0;
  }
  return m;
}

bool reset_peak_memory() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return bool(f);
}

double available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  while (f >> key)
    if (key == "MemAvailable:" && f >> kb) return kb * 1024.0;
  return -1;
}

}  // namespace meshdit
