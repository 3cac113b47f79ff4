// The model registry: each transformer says what it is, once, in its own file (register_<model>() at the
// bottom of models/transformers/<model>.cpp), and every tool iterates over these entries instead of switching
// on an architecture: `check` (runs a case of any registered class), `plan` (weights, FLOPs, activations and
// collectives per rank), `bench transformer` / `bench random-checkpoint`, and single-file loading.
//
// A model's configuration travels as std::any holding its own typed config (FluxConfig, SD3Config, ...): the
// entry's functions are the only code that looks inside.
#pragma once
#include <any>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/hooks.h"
#include "io/checkpoint.h"
#include "io/json_config.h"
#include "io/single_file.h"
#include "parallel/mesh.h"

namespace meshdit {

using TensorMap = std::map<std::string, Tensor>;

// A loaded transformer behind one call: the diffusers forward's tensor arguments by name.
class Transformer {
 public:
  virtual ~Transformer() = default;
  virtual Result<Tensor> forward(const TensorMap& inputs, const Hooks* hooks = nullptr) const = 0;
};

// The named input of a forward, or an undefined tensor when it is absent (an optional input).
Tensor input_of(const TensorMap& inputs, const std::string& name);

// One tensor argument of the forward, as reference cases name it.
struct TransformerInput {
  std::string name;
  bool batched = true;    // dim 0 is the batch (split across the cfg group of a mesh)
  bool optional = false;  // absent for some configs (Flux's guidance on schnell)
};

// Which rows a weight multiplies in one forward (for FLOPs): none (not a matmul: norms, tables), the image
// tokens, the text tokens, both, or one row per sample (timestep/modulation projections).
enum class Rows : uint8_t { None, Image, Text, Joint, One };

// The sizes `plan` models a rank's forward with: whole sequences N (image/video tokens) and L (text), this
// rank's image shard n and batch b, and the parallel config.
struct RankShape {
  int64_t N = 0, L = 0, n = 0, b = 1;
  ParallelConfig pc;
};

// What one forward costs a rank beyond its linears (whose FLOPs come from the weight spec): the collectives
// it makes (elements per sample unless said otherwise), its attentions and its peak live activations.
// app/plan.h describes the cost model.
struct ForwardCost {
  bool has_qk_norm_all_reduce = false, has_adaln_gather = false;       // which collectives the model makes at all
  int64_t tp_all_reduce_calls = 0, tp_all_reduce_elems = 0;            // row-parallel outputs
  int64_t qk_norm_all_reduce_calls = 0, qk_norm_all_reduce_bytes = 0;  // norms across sharded heads (f32 sums)
  int64_t adaln_gather_calls = 0, adaln_gather_elems = 0;              // sharded modulation outputs, gathered
  int64_t sp_attentions = 0;    // attentions over the image tokens (SP traffic in each)
  double attn_flops = 0;        // one such attention, whole batch
  double other_attn_flops = 0;  // every attention without SP traffic (cross-attention to text)
  int64_t act_elems = 0;        // peak live activation elements of the forward, whole batch
};

// Sizes every tool asks of a config. out_tok: latent values per output token (sequence gathers, CFG combine).
struct ModelDims {
  int64_t dim = 0, heads = 0, head_dim = 0, out_tok = 0;
};

// An MM-DiT (SD3, Flux): joint attention over text ++ image tokens in every block. Its peak activations and
// attention cost (ForwardCost's act_elems, attn_flops, sp_attentions) from its sizes; the model adds its
// collectives. `singles`: Flux's single-stream blocks (attention and MLP from one normed input).
struct MmditShape {
  int64_t dim = 0, ffn = 0, head_dim = 0, in_tok = 0, text_in = 0, doubles = 0, singles = 0;
  bool rope = false;
};
ForwardCost mmdit_cost(const MmditShape& s, const RankShape& r);

// What `plan` assumes of a model when the user gives no size.
struct PlanDefaults {
  int64_t width = 1024, height = 1024, frames = 1, text_tokens = 512;
  bool cfg_batch = false;  // its pipeline runs a conditional and an unconditional batch each step
};

// A named configuration `plan` knows without a folder ("flux-dev", "sd35-large").
struct ModelPreset {
  std::string name;
  std::function<std::any()> config;
};

struct TransformerArch {
  std::string name;                  // "flux": plan's arch field, messages
  std::vector<std::string> classes;  // diffusers _class_name(s) it serves, or a reference's full class name
  std::vector<ModelPreset> presets;
  // A config with other block counts, for checkpoints of real width but few blocks (`bench random-checkpoint`'s
  // --double and --single; a model with one stack of blocks takes the first count).
  std::function<std::any(const std::any&, int64_t blocks, int64_t single_blocks)> with_blocks;
  PlanDefaults defaults;
  // Its loader pads the attention heads with zero heads up to a multiple of tp (ModelTraits::pad_heads).
  bool pad_heads = false;

  // Config from a config.json; from the tensors of a diffusers-named checkpoint (empty: not inferable).
  std::function<Result<std::any>(const std::string& json_path)> parse_config;
  std::function<Result<std::any>(const Checkpoint& ck)> infer_config;
  // The config for one reference call whose meta.json gives non-tensor arguments the forward needs (Qwen-Image's
  // img_shapes); empty: the model takes none.
  std::function<Result<std::any>(const std::any& config, const Json& non_tensor_args)> call_config;
  // Further outputs of its reference case, each the same forward under a variant of the config (Motif's
  // `sample_without_time_token`): output name -> the variant.
  std::vector<std::pair<std::string, std::function<std::any(const std::any&)>>> case_variants;
  // Single-file layouts, and the top-level modules of its diffusers names (the first list identifies it).
  std::vector<SingleFileLayout> layouts;
  std::vector<std::string> diffusers_detect, diffusers_modules;
  // The general.architecture values of GGUF files of this model (city96's ComfyUI-GGUF names: "flux", "sd3",
  // "wan", "qwen_image"); a GGUF file naming none of the registered ones is refused.
  std::vector<std::string> gguf_architectures;
  // Stored-name parts of the tensors those tools keep in float rather than quantize (embedders, final layer, Wan's
  // modulation): a tensor whose name contains one (at a name component's start) stays F32/F16/BF16.
  std::vector<std::string> gguf_keep_float;

  // This rank's shard (par: its TP/SP groups; nullptr: one device). Running it on Checkpoint::meta() yields
  // the weight spec. Empty while the model's forward has not landed (`plan` still works from `spec`).
  std::function<Result<std::shared_ptr<Transformer>>(const Checkpoint&, const std::any&, const ParallelContext*)> load;
  // The weights the loader takes, when `load` is empty; otherwise derived from `load` (see weight_spec()).
  std::function<Status(const Checkpoint&, const std::any&, const ParallelContext*)> declare_weights;

  std::vector<TransformerInput> inputs;
  std::function<ModelDims(const std::any&)> dims;
  std::function<std::string(const std::any&)> describe;
  // Image/video tokens at a size (pixels, frames), or why the size does not fit.
  std::function<Result<int64_t>(const std::any&, int64_t width, int64_t height, int64_t frames)> image_tokens;
  // Image tokens of a case's inputs (for the mesh's automatic config).
  std::function<int64_t(const std::any&, const TensorMap& inputs)> tokens_of_inputs;
  // Random inputs of a generation's shapes (batch 1), for `bench transformer`.
  std::function<TensorMap(const std::any&, int64_t width, int64_t height, int64_t frames, int64_t text_tokens)>
      random_inputs;
  // Multiply-adds x 2 of every linear and attention of one forward at batch 1.
  std::function<double(const std::any&, int64_t image_tokens, int64_t text_tokens)> flops;
  // For `plan`: which rows each weight multiplies, and the rest of a rank's forward.
  std::function<Rows(const std::string& weight)> rows_of;
  std::function<ForwardCost(const std::any&, const RankShape&)> cost;
};

// Every registered transformer (registers the built-in ones on first use).
const std::vector<TransformerArch>& transformer_archs();
// The entry serving a diffusers class name ("FluxTransformer2DModel"), or nullptr.
const TransformerArch* find_transformer_arch(const std::string& class_name);
// The class a reference case names for an entry's class: "diffusers.<name>" for a diffusers class, the name
// itself for another library's full class name (one with a dot: "motif_ref.motif.modeling_dit.MotifDiT").
std::string case_class_of(const std::string& class_name);
// The entry a case of class `case_class` runs (the inverse of case_class_of), or nullptr.
const TransformerArch* find_transformer_arch_for_case(const std::string& case_class);

// The weights `arch`'s loader takes for `config` on TP rank `tp_rank` of `tp` ranks, each as `dtype`, from the
// config alone (no file is read, no memory is touched).
Result<WeightLog> weight_spec(const TransformerArch& arch, const std::any& config, int tp, int tp_rank,
                              DType dtype = DType::BF16);
// The same loader on a real checkpoint: what TP rank `tp_rank` of `tp` actually holds, tensor by tensor (the
// model is dropped afterwards).
Result<WeightLog> loaded_weights(const TransformerArch& arch, const Checkpoint& ck, const std::any& config, int tp,
                                 int tp_rank);

// A transformer checkpoint (file, sharded index or folder) in any registered layout, with the entry it belongs
// to. `detected_layout` (may be null) receives the layout's name or "diffusers".
struct OpenedTransformer {
  Checkpoint ck;
  const TransformerArch* arch = nullptr;
  std::any config;  // the config.json beside it, else inferred from its tensors
  std::string layout;
};
Result<Checkpoint> open_transformer_checkpoint(const std::string& path_or_dir, std::string* detected_layout);
// The entry a checkpoint opened in `layout` belongs to: the one whose layout it is, else (diffusers names) the one
// whose diffusers_detect names it has; nullptr when none.
const TransformerArch* transformer_arch_of(const Checkpoint& ck, const std::string& layout);
Result<OpenedTransformer> open_transformer(const std::string& path_or_dir);
// A GGUF file's general.architecture must be one of `arch`'s (a file whose tensors say otherwise is refused).
Status check_gguf_architecture(const Checkpoint& ck, const TransformerArch& arch, const std::string& layout);

// Adds an entry. Each model file defines `void register_<model>()` calling this; models/registry.cpp lists
// those functions (a static library links only what is referenced, so self-registering objects would vanish).
void register_transformer(TransformerArch arch);

}  // namespace meshdit
