#include "app/device_option.h"

#include "backend/backend.h"

namespace meshdit {

Device device_option(const std::string& name) { return name == "cuda" ? Device::CUDA : Device::CPU; }

Status require_device(Device d) {
  if (d == Device::CPU || find_backend(d)) return ok_status();
  return make_error(std::string("--device ") + device_name(d) + ": no " + device_name(d) +
                    " device in this process (`meshdit info` lists the backends this binary has and the devices it "
                    "found)");
}

}  // namespace meshdit
