// `--device` on check, generate and bench transformer: the device a name means, and whether this process has it.
#pragma once
#include <string>

#include "core/device.h"
#include "core/error.h"

namespace meshdit {

// "cuda" is the CUDA device, anything else the CPU (the commands accept only "cpu" and "cuda").
Device device_option(const std::string& name);
// ok for the CPU and for a device whose backend this process has (compiled in, and the device present);
// otherwise the one error every command gives.
Status require_device(Device d);

}  // namespace meshdit
