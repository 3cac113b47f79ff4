// A checkpoint is a set of named tensors spread over one or more safetensors files: a single file, a
// sharded set described by *.safetensors.index.json, or a diffusers component folder holding either.
// A file is recognised by its first bytes, so a PyTorch zip checkpoint (.bin, .pt, .pth: what torch.save
// writes) opens the same way, read without running its pickle (io/torch_checkpoint.h). An optional prefix
// ("dit.") keeps only the tensors under it and removes it from their names.
// Lookups return memory-mapped views; a missing tensor or a wrong shape is an error naming both.
//
// Aliases give stored tensors other names without copying them: an alias is one or more row ranges
// (dim 0) of stored tensors. One range is a view into the mapping (rows of a contiguous tensor are
// contiguous); several are concatenated on get() (a copy, meant for the few tensors whose rows must be
// reordered). This is how single-file layouts (fused qkv, other names) load as diffusers layers.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace meshdit {

// How a weight is split over a tensor-parallel group: whole on every rank, a set of dim-0 row ranges
// (column-parallel linears: a slice of the outputs), or a set of dim-1 column ranges (row-parallel
// linears: a slice of the inputs).
enum class Shard : uint8_t { Replicated, Rows, Cols };
const char* shard_name(Shard s);

// One weight as a loader took it: the whole tensor, how it was split and what this rank keeps. A log of
// these is the model's weight spec, written by the loader itself, so `plan`, `bench random-checkpoint` and
// the tests derive from the same code that loads.
struct WeightRecord {
  std::string name;
  Shape shape;  // the whole tensor
  DType dtype = DType::BF16;
  Shard shard = Shard::Replicated;
  Shape local;                     // this rank's part
  std::optional<QuantType> quant;  // kept block-quantized (a GGUF weight taken by get_quantized)
  int64_t local_numel() const { return shape_numel(local); }
  size_t local_bytes() const {
    if (quant && local.size() == 2) return size_t(local[0]) * quant_row_bytes(*quant, local[1]);
    return size_t(local_numel()) * dtype_size(dtype);
  }
};
using WeightLog = std::vector<WeightRecord>;

// A weight kept as its file stores it, block-quantized (a GGUF file's Q8_0, Q4_K, ...): this rank's rows as bytes,
// which the products read block by block (ops::linear_quantized), so a quantized file takes as little memory as
// it takes disk.
struct QuantizedWeight {
  Tensor rows;  // U8 [out features (this rank's), bytes per row]: a view into the mapping, or a copy of a shard
  QuantType type = QuantType::Q8_0;
  int64_t cols = 0;  // in features (this rank's)
};

class Checkpoint {
 public:
  // A checkpoint without files: every get() answers the expected shape with a tensor of `dtype` that has
  // no data (a placeholder nothing may read). Running a model's loader on it yields the model's weight
  // spec from its config alone (what `meshdit plan` needs) without touching memory.
  static Checkpoint meta(DType dtype, const std::string& origin = "weight spec");
  bool is_meta() const { return meta_; }
  // The device the weights go to: get() and get_sharded() hand out weights placed there (ops::place: on the
  // CPU the mapped view itself, no copy). The one step that puts a model's weights on a device: set it
  // before running the loader.
  void place_on(Device dev) { device_ = dev; }
  Device device() const { return device_; }
  // On the CPU: weights of 2 MiB and more are copied out of the file's mapping into anonymous memory on 2 MiB
  // pages (and the mapping's pages dropped) as they are taken, instead of being read through the mapping's
  // 4 KiB pages. In a VM every TLB miss walks two page tables; products that stream a weight once (the adaptive
  // norms' one-row modulations) ran at half the memory bandwidth through the mapping, and a whole SD3.5 step
  // 12-20 % slower and twice as variable (bench/README.md). The price: the weights can no longer be paged out
  // under memory pressure and re-read from the file. pipelines/components' place_checked decides.
  void copy_into_memory(bool on) { copy_into_memory_ = on; }
  bool copies_into_memory() const { return copy_into_memory_; }
  // From now on every weight taken is appended to `log` (shared: copies of this checkpoint append too).
  void record_into(std::shared_ptr<WeightLog> log) { log_ = std::move(log); }
  static Result<Checkpoint> open_file(const std::string& path, const std::string& prefix = "");
  static Result<Checkpoint> open_index(const std::string& index_json, const std::string& prefix = "");
  // A folder: the one *.safetensors.index.json it holds, else its *.safetensors files (all of them); without
  // either, the same for PyTorch files (*.bin.index.json, else *.bin); without those, its *.gguf files.
  static Result<Checkpoint> open_dir(const std::string& dir, const std::string& prefix = "");
  // A file or a folder.
  static Result<Checkpoint> open(const std::string& path, const std::string& prefix = "");

  // Visible names: the stored ones (unless hidden) and the aliases, sorted.
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;
  Result<Tensor> get(const std::string& name) const;
  // A weight: also checks the shape, and that the dtype is one the kernels take (F32, F16, BF16).
  Result<Tensor> get(const std::string& name, const Shape& expect) const;
  // This rank's part of a weight of shape `expect`: rows (dim 0) or columns (dim 1) in `ranges`, in order.
  // One row range is a view into the mapping; anything else is a copy of just that part, after which the
  // whole tensor's mapped pages are dropped, so a rank's resident memory stays at its shard.
  // padded_extent > 0 (at least the stored extent of the sharded dim): ranges may reach up to it, and the
  // rows/columns past the stored extent are zeros (attention heads padded up to a multiple of tp: a zero head
  // contributes nothing). Only an explicit padded_extent allows a range past the stored extent; the record
  // keeps the stored shape and the padded local part, so a plan counts the zeros a rank holds.
  Result<Tensor> get_sharded(const std::string& name, const Shape& expect, Shard shard,
                             const std::vector<std::pair<int64_t, int64_t>>& ranges, int64_t padded_extent = 0) const;
  // The same part of a weight kept block-quantized, when it is stored so (a GGUF Q* type) and keep_quantized() is
  // on: nullopt for a float tensor, a tensor whose alias parts differ in type, zero padding past the stored
  // extent, where the caller takes the float weight instead. On a device (place_on) the blocks are uploaded as
  // stored and the device's linear_quantized decodes them. Column ranges
  // (row-parallel linears) must fall on block boundaries: otherwise an error naming the tensor, its type and
  // block size. A missing tensor is nullopt too (the float path names it).
  Result<std::optional<QuantizedWeight>> get_quantized(const std::string& name, const Shape& expect, Shard shard,
                                                       const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                                       int64_t padded_extent = 0) const;
  // On by default: a quantized file's weights stay quantized in memory. Off: get_quantized answers nullopt and
  // every weight is taken dequantized (to BF16), as before the quantized products existed.
  void set_keep_quantized(bool on) { keep_quantized_ = on; }
  bool keep_quantized() const { return keep_quantized_; }
  // The bytes its stored tensors take once taken (get(): as decoded, e.g. BF16 for FP8 and dequantized GGUF
  // tensors; get_quantized(): block-quantized GGUF rows as stored while keep_quantized() is on): what placing a
  // model's weights on a device costs there, checked against its free memory before anything is copied.
  uint64_t placed_bytes() const;
  // Shape of a tensor without touching its data (for inferring configs from weights).
  Result<Shape> shape_of(const std::string& name) const;
  const std::string& origin() const { return origin_; }
  // A metadata value of its files (safetensors' __metadata__, a GGUF file's string values such as
  // "general.architecture"): the first file's that has the key, else "".
  std::string file_metadata(const std::string& key) const;
  // Whether any of its files is a GGUF file.
  bool has_gguf() const;

  // Rows [begin, end) of dim 0 of a stored tensor; end < 0 means to the last row.
  struct RowRange {
    std::string source;
    int64_t begin = 0, end = -1;
  };
  // `name` becomes the stored tensor `source` as a whole (a view; any rank, scalars included).
  Status add_alias(const std::string& name, const std::string& source);
  // `name` becomes rows [begin, end) of `source` (a view).
  Status add_alias(const std::string& name, const std::string& source, int64_t begin, int64_t end);
  // `name` becomes the concatenation of `parts` on dim 0 (a view when there is one part, else a copy made by
  // each get()). Every part must have the same dtype and trailing dims. An alias takes precedence over a stored
  // tensor of the same name.
  Status add_alias(const std::string& name, std::vector<RowRange> parts);
  // From now on only aliases are visible: stored names stay reachable as alias sources only.
  void hide_stored_names() { stored_visible_ = false; }
  bool is_alias(const std::string& name) const { return aliases_.count(name) != 0; }
  // The stored tensors (with rows) an alias reads, as "'src' rows [a, b)", for messages; "" for a stored name.
  std::string describe_alias(const std::string& name) const;
  // Stored tensors by their own names, whether visible or not (layout detection, alias sources).
  std::vector<std::string> stored_names() const;
  // Drops this process's resident pages of every memory-mapped tensor (the mappings stay: a later read faults
  // the file back in). A model whose weights sit idle for a while (Wan2.2's other expert) gives its memory
  // back this way without being reloaded.
  void release_resident() const;
  bool has_stored(const std::string& name) const { return where_.count(name) != 0; }
  Result<Shape> stored_shape(const std::string& name) const;
  Result<Tensor> get_stored(const std::string& name) const;

 private:
  struct Where {
    size_t file = 0, tensor = 0;  // files_[file]->header().tensors[tensor]
  };
  struct Alias {
    std::vector<RowRange> parts;  // resolved: 0 <= begin < end <= rows
    bool whole = false;           // one part: the stored tensor as it is
    Shape shape;
    DType dtype = DType::F32;
  };
  Status add_file(const std::string& path, const std::string& prefix);
  const TensorInfo& info(const Where& w) const { return files_[w.file]->header().tensors[w.tensor]; }
  std::string origin_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Where> where_;
  std::map<std::string, Alias> aliases_;
  bool stored_visible_ = true;
  bool meta_ = false;
  bool keep_quantized_ = true;
  Device device_ = Device::CPU;
  bool copy_into_memory_ = false;
  class WeightArena;
  mutable std::shared_ptr<WeightArena> arena_;  // shared by copies of this checkpoint
  DType meta_dtype_ = DType::BF16;
  std::shared_ptr<WeightLog> log_;
  void record(const std::string& name, const Tensor& whole, Shard shard, const Shape& local) const;
  Result<Tensor> checked(const std::string& name, const Shape& expect) const;  // validated, on the host
  Tensor placed(const Tensor& t) const;  // on device_ (or copied into memory, copy_into_memory)
};

// model_index.json of a diffusers pipeline folder.
struct DiffusersFolder {
  std::string dir;
  std::string class_name;                                                 // e.g. "FluxPipeline"
  std::map<std::string, std::pair<std::string, std::string>> components;  // name -> (library, class)
  static Result<DiffusersFolder> open(const std::string& dir);
  std::string path(const std::string& component) const { return dir + "/" + component; }
};

bool path_exists(const std::string& p);
bool is_directory(const std::string& p);

}  // namespace meshdit
