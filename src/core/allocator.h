// Memory for tensor storage, one allocator per device. Tensor::empty asks the allocator registered for
// the device and the storage gives the buffer back to that same allocator, with its size, when the last
// view of it dies: the contract a caching GPU allocator needs (it keeps freed blocks binned by size
// instead of returning them to the driver). The host's allocator is core's own; a backend registers its
// device's when it is set up.
#pragma once
#include <cstddef>

#include "core/device.h"

namespace meshdit {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // A buffer of at least `bytes` (> 0) bytes, or null when the device is out of memory.
  virtual void* allocate(size_t bytes) = 0;
  // Returns a buffer from allocate(bytes), with the same bytes.
  virtual void deallocate(void* p, size_t bytes) = 0;
  virtual const char* name() const = 0;
};

// Host buffers aligned to 64 bytes (cache lines; the widest vector loads). Buffers of 1 MiB and more are
// ranges of reserved anonymous address space (transparent huge pages where the kernel allows them on request),
// kept resident for reuse when freed (core/buffer_cache.h) while the freed memory stays under a limit:
// MESHDIT_HOST_CACHE_MB, default an eighth of the machine's memory and at most 4 GiB; 0 turns the cache off
// (each buffer its own mapping). Sanitizer builds do not cache (a reused buffer would hide a use after free
// from them).
Allocator& host_allocator();

struct HostCacheStats {
  size_t cached_bytes = 0, committed_bytes = 0, limit_bytes = 0;
  uint64_t hits = 0, misses = 0, evictions = 0;
  // Bytes of host tensor storage held by tensors now, and the most ever held at once (without what waits in
  // the cache): the activation memory a run needs, apart from the weights' mapping.
  size_t live_bytes = 0, peak_live_bytes = 0;
};
HostCacheStats host_cache_stats();
// Returns every cached host buffer to the OS: between stages whose buffers differ (after the denoising loop,
// before the VAE), so their memory does not wait in the cache.
void release_host_cache();
// Changes the limit (bytes; 0 turns caching off and releases what is cached).
void set_host_cache_limit(size_t bytes);

// The allocator registered for device d; null when none is (its backend is not compiled in or not set
// up yet: backend_for / compiled_backends set up every compiled backend).
Allocator* allocator_for(Device d);

// Registers a for device d (null unregisters) and returns the previous one. Storage keeps a pointer to
// the allocator that made it, so an allocator must outlive every tensor it allocated, registered or not.
Allocator* set_allocator(Device d, Allocator* a);

}  // namespace meshdit
