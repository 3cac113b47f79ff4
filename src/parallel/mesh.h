// The device mesh and how a model is spread over it.
//
// A mesh is R x C ranks (rank = row * C + col). A ParallelConfig factors the ranks into three groups:
//   cfg  - halves of the guidance batch (conditional / unconditional), combined once per step
//   sp   - sequence parallel: image/video tokens split, attention by ring or Ulysses
//   tp   - tensor parallel: heads and feed-forward hidden sharded Megatron-style
// with rank = (cfg_i * sp + sp_i) * tp + tp_i: TP is innermost, so when tp divides C a TP group lies in one
// mesh row (axis 1: the fast links inside a node or card), SP spans the next ranks and CFG the outermost.
// The VAE decode uses its own split: `vae` ranks of the mesh decode one image spatially.
#pragma once
#include <memory>
#include <set>
#include <string>

#include "core/error.h"
#include "parallel/comm.h"

namespace meshdit {

enum class SpMode { Ring, Ulysses };
const char* sp_mode_name(SpMode m);

struct MeshShape {
  int rows = 1, cols = 1;
  int size() const { return rows * cols; }
  std::string str() const { return std::to_string(rows) + "x" + std::to_string(cols); }
  // "2x4", "4" (= 1x4)
  static Result<MeshShape> parse(const std::string& s);
  // What `--mesh` means to a command run by `ranks` processes: "" = 1 x ranks, else parse(s).
  static Result<MeshShape> parse_or_row(const std::string& s, int ranks);
};

// What the automatic choice and the validation need to know about a model.
struct ModelTraits {
  std::string name;          // for messages
  int64_t heads = 1;         // attention heads of the transformer
  bool cfg_batch = false;    // the pipeline runs a conditional and an unconditional batch each step
  int64_t image_tokens = 0;  // at the size being generated (0: unknown)
  // Text encoders run once per prompt: an uneven head split only costs balance, so heads need not divide
  // by tp (each rank still needs one head).
  bool uneven_heads_ok = false;
  // The transformer pads its heads with zero heads up to a multiple of tp (SD3: 38 heads would allow only
  // tp=2), so tp need not divide the heads; Ulysses then splits the padded heads.
  bool pad_heads = false;
  int64_t heads_for(int tp) const { return pad_heads && tp > 1 ? (heads + tp - 1) / tp * tp : heads; }
};

struct ParallelConfig {
  int cfg = 1, sp = 1, tp = 1;
  SpMode sp_mode = SpMode::Ring;
  int vae = 0;  // ranks decoding the VAE together; 0 = every rank of the mesh
  int ranks() const { return cfg * sp * tp; }
  std::string str() const;  // "cfg=2,sp=1,tp=4,sp_mode=ring,vae=8"
  // Overrides from "--parallel cfg=2,tp=4,sp=1,sp_mode=ulysses,vae=4" on top of `base`; an unknown key or
  // a bad value is an error naming it.
  // `named` (optional) receives the keys the text sets.
  static Result<ParallelConfig> parse(const std::string& s, const ParallelConfig& base,
                                      std::set<std::string>* named = nullptr);
  static Result<ParallelConfig> parse(const std::string& s);
};

// The automatic configuration for a model on a mesh (what `--mesh RxC` picks without `--parallel`):
// CFG parallel on axis 0 when the model runs a guidance batch and the rows are even; then for images TP
// along axis 1 as wide as the heads allow (shards weights: memory falls as 1/tp) and SP over the rest;
// for long sequences (>= kLongSequenceTokens image/video tokens) SP along axis 1 and TP over what is left.
constexpr int64_t kLongSequenceTokens = 16384;
ParallelConfig auto_parallel_config(const MeshShape& mesh, const ModelTraits& model);
// Every factor fits the mesh and the model; an error says which and why.
Status validate(const ParallelConfig& pc, const MeshShape& mesh, const ModelTraits& model);

// What layers are given: their TP and SP groups (size-1 groups on one device), never the whole mesh.
struct ParallelContext {
  Communicator* tp = nullptr;
  Communicator* sp = nullptr;
  SpMode sp_mode = SpMode::Ring;
  int tp_size() const { return tp ? tp->size() : 1; }
  int tp_rank() const { return tp ? tp->rank() : 0; }
  int sp_size() const { return sp ? sp->size() : 1; }
  int sp_rank() const { return sp ? sp->rank() : 0; }
};

// The communicators of one rank.
class Mesh {
 public:
  // Splits `world` (whose size must equal shape.size() and pc.ranks()) into the row, column, cfg, sp, tp
  // and vae groups. Collective: every rank calls it.
  static Result<Mesh> create(std::unique_ptr<Communicator> world, const MeshShape& shape, const ParallelConfig& pc);
  // The 1x1 mesh (no MPI).
  static Mesh single();

  const MeshShape& shape() const { return shape_; }
  const ParallelConfig& config() const { return pc_; }
  Communicator& world() const { return *world_; }
  Communicator& row() const { return *row_; }  // axis 1: the ranks of my row
  Communicator& col() const { return *col_; }  // axis 0: the ranks of my column
  Communicator& cfg() const { return *cfg_; }
  Communicator& sp() const { return *sp_; }
  Communicator& tp() const { return *tp_; }
  Communicator& vae() const { return *vae_; }  // the ranks decoding my image (its rank 0 writes it)
  int rank() const { return world_->rank(); }
  int cfg_index() const { return cfg_->rank(); }
  ParallelContext context() const { return ParallelContext{tp_.get(), sp_.get(), pc_.sp_mode}; }

 private:
  MeshShape shape_;
  ParallelConfig pc_;
  std::shared_ptr<Communicator> world_, row_, col_, cfg_, sp_, tp_, vae_;
};

// The mesh of this process group for a model: the automatic config for `shape`, then the `overrides`
// ("--parallel" text, may be empty; naming any of cfg/sp/tp replaces the automatic factoring, with cfg and
// tp not named = 1 and sp not named = the remaining ranks), validated, over MPI_COMM_WORLD (or the 1x1 mesh without
// MPI).
Result<Mesh> make_mesh(const MeshShape& shape, const std::string& overrides, const ModelTraits& model);
// The config make_mesh uses, without building communicators (for `meshdit plan`).
Result<ParallelConfig> resolve_parallel_config(const MeshShape& shape, const std::string& overrides,
                                               const ModelTraits& model);

}  // namespace meshdit
