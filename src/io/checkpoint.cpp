#include "io/checkpoint.h"

#include <algorithm>
#include <filesystem>

#include "io/json_config.h"

namespace fs = std::filesystem;

namespace meshdit {

bool path_exists(const std::string& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

bool is_directory(const std::string& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

Status Checkpoint::add_file(const std::string& path) {
  MD_TRY(auto f, SafetensorsFile::open(path));
  for (const auto& t : f->header().tensors) {
    if (where_.count(t.name)) return make_error(path + ": tensor '" + t.name + "' also appears in " + files_[where_[t.name]]->path());
    where_[t.name] = files_.size();
  }
  files_.push_back(std::move(f));
  return ok_status();
}

Result<Checkpoint> Checkpoint::open_file(const std::string& path) {
  Checkpoint c;
  c.origin_ = path;
  MD_RETURN_IF_ERROR(c.add_file(path));
  return c;
}

Result<Checkpoint> Checkpoint::open_index(const std::string& index_json) {
  MD_TRY(Json j, load_json(index_json));
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    return make_error(index_json + ": no \"weight_map\" object");
  const std::string dir = fs::path(index_json).parent_path().string();
  std::vector<std::string> shards;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) return make_error(index_json + ": weight_map['" + it.key() + "'] is not a file name");
    std::string s = it.value().get<std::string>();
    if (std::find(shards.begin(), shards.end(), s) == shards.end()) shards.push_back(s);
  }
  std::sort(shards.begin(), shards.end());
  Checkpoint c;
  c.origin_ = index_json;
  for (const auto& s : shards) {
    const std::string p = (fs::path(dir) / s).string();
    if (!path_exists(p)) return make_error(index_json + ": shard " + s + " is missing");
    MD_RETURN_IF_ERROR(c.add_file(p));
  }
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
    if (!c.has(it.key()))
      return make_error(index_json + ": tensor '" + it.key() + "' is not in its shard " + it.value().get<std::string>());
  return c;
}

Result<Checkpoint> Checkpoint::open_dir(const std::string& dir) {
  std::vector<std::string> index, files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 22 && n.compare(n.size() - 23, 23, ".safetensors.index.json") == 0) index.push_back(e.path().string());
    else if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) files.push_back(e.path().string());
  }
  if (ec) return make_error(dir + ": cannot list folder: " + ec.message());
  if (index.size() > 1) return make_error(dir + ": more than one *.safetensors.index.json");
  if (index.size() == 1) return open_index(index[0]);
  if (files.empty()) return make_error(dir + ": no .safetensors file");
  std::sort(files.begin(), files.end());
  Checkpoint c;
  c.origin_ = dir;
  for (const auto& f : files) MD_RETURN_IF_ERROR(c.add_file(f));
  return c;
}

Result<Checkpoint> Checkpoint::open(const std::string& path) {
  if (!path_exists(path)) return make_error(path + ": no such file or folder");
  if (is_directory(path)) return open_dir(path);
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".json") == 0) return open_index(path);
  return open_file(path);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> n;
  for (const auto& kv : where_) n.push_back(kv.first);
  return n;
}

Result<Tensor> Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return make_error(origin_ + ": missing tensor '" + name + "'");
  return files_[it->second]->get(name);
}

Result<Tensor> Checkpoint::get(const std::string& name, const Shape& expect) const {
  MD_TRY(Tensor t, get(name));
  if (t.dtype() != DType::F32 && t.dtype() != DType::F16 && t.dtype() != DType::BF16)
    return make_error(origin_ + ": tensor '" + name + "' has dtype " + dtype_name(t.dtype()) +
                      "; weights must be F32, F16 or BF16");
  if (t.shape() != expect)
    return make_error(origin_ + ": tensor '" + name + "' has shape " + shape_str(t.shape()) + ", expected " +
                      shape_str(expect));
  return t;
}

Result<Shape> Checkpoint::shape_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return make_error(origin_ + ": missing tensor '" + name + "'");
  for (const auto& t : files_[it->second]->header().tensors)
    if (t.name == name) return t.shape;
  return make_error(origin_ + ": missing tensor '" + name + "'");
}

Result<DiffusersFolder> DiffusersFolder::open(const std::string& dir) {
  if (!is_directory(dir)) return make_error(dir + ": model folder not found");
  const std::string idx = dir + "/model_index.json";
  if (!path_exists(idx)) return make_error(dir + ": no model_index.json (not a diffusers pipeline folder)");
  MD_TRY(Json j, load_json(idx));
  if (!j.is_object() || !j.contains("_class_name") || !j["_class_name"].is_string())
    return make_error(idx + ": missing \"_class_name\"");
  DiffusersFolder f;
  f.dir = dir;
  f.class_name = j["_class_name"].get<std::string>();
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().empty() || it.key()[0] == '_') continue;
    const auto& v = it.value();
    if (v.is_array() && v.size() == 2 && v[0].is_string() && v[1].is_string())
      f.components[it.key()] = {v[0].get<std::string>(), v[1].get<std::string>()};
  }
  return f;
}

}  // namespace meshdit
