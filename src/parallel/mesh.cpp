#include "parallel/mesh.h"

#include <algorithm>
#include <sstream>

#include "parallel/mpi_comm.h"

namespace meshdit {

const char* sp_mode_name(SpMode m) { return m == SpMode::Ring ? "ring" : "ulysses"; }

namespace {

Result<int> parse_positive(const std::string& v, const std::string& what) {
  size_t used = 0;
  int x = 0;
  try {
    x = std::stoi(v, &used);
  } catch (...) {
    used = 0;
  }
  if (used != v.size() || v.empty() || x < 1 || x > 4096)
    return make_error(what + ": '" + v + "' is not a positive integer");
  return x;
}

}  // namespace

Result<MeshShape> MeshShape::parse(const std::string& s) {
  MeshShape m;
  const auto x = s.find('x');
  const std::string what = "--mesh " + s + " (expected RxC, e.g. 2x4)";
  if (x == std::string::npos) {
    MD_TRY(m.cols, parse_positive(s, what));
    return m;
  }
  MD_TRY(m.rows, parse_positive(s.substr(0, x), what));
  MD_TRY(m.cols, parse_positive(s.substr(x + 1), what));
  return m;
}

Result<MeshShape> MeshShape::parse_or_row(const std::string& s, int ranks) {
  if (s.empty()) return MeshShape{1, ranks};
  return parse(s);
}

std::string ParallelConfig::str() const {
  std::ostringstream o;
  o << "cfg=" << cfg << ",sp=" << sp << ",tp=" << tp << ",sp_mode=" << sp_mode_name(sp_mode) << ",vae=" << vae;
  return o.str();
}

Result<ParallelConfig> ParallelConfig::parse(const std::string& s) { return parse(s, ParallelConfig{}); }

Result<ParallelConfig> ParallelConfig::parse(const std::string& s, const ParallelConfig& base,
                                             std::set<std::string>* named) {
  ParallelConfig pc = base;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string::npos)
      return make_error("--parallel: '" + item + "' is not key=value (keys: cfg, sp, tp, sp_mode, vae)");
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    if (named) named->insert(k);
    const std::string what = "--parallel " + k;
    if (k == "cfg") {
      MD_TRY(pc.cfg, parse_positive(v, what));
    } else if (k == "sp") {
      MD_TRY(pc.sp, parse_positive(v, what));
    } else if (k == "tp") {
      MD_TRY(pc.tp, parse_positive(v, what));
    } else if (k == "vae") {
      MD_TRY(pc.vae, parse_positive(v, what));
    } else if (k == "sp_mode") {
      if (v == "ring")
        pc.sp_mode = SpMode::Ring;
      else if (v == "ulysses")
        pc.sp_mode = SpMode::Ulysses;
      else
        return make_error("--parallel sp_mode: '" + v + "' (expected ring or ulysses)");
    } else {
      return make_error("--parallel: unknown key '" + k + "' (keys: cfg, sp, tp, sp_mode, vae)");
    }
  }
  return pc;
}

ParallelConfig auto_parallel_config(const MeshShape& mesh, const ModelTraits& model) {
  ParallelConfig pc;
  if (model.uneven_heads_ok) {  // a text encoder: TP over every rank
    pc.tp = mesh.size();
    return pc;
  }
  int rows = mesh.rows, cols = mesh.cols;
  if (model.cfg_batch) {
    if (rows % 2 == 0) {
      pc.cfg = 2;
      rows /= 2;
    } else if (cols % 2 == 0) {
      pc.cfg = 2;
      cols /= 2;
    }
  }
  auto widest = [&](int n) {  // the widest divisor of n that divides the heads
    for (int t = n; t > 1; --t)
      if (n % t == 0 && model.heads % t == 0) return t;
    return 1;
  };
  if (model.image_tokens >= kLongSequenceTokens) {
    // Long (video) sequences: SP along axis 1. Its ring K/V passes hide behind attention, which grows with
    // the square of the tokens, while TP would all-reduce every token's activations twice per block
    // (`meshdit plan`: Wan2.2 on 2x4 sends 260 GiB/step with tp=4). TP only over what is left of axis 0.
    pc.tp = widest(rows);
  } else {
    // Images: TP along axis 1 as wide as the heads allow (weights shrink 1/tp), SP over the rest.
    pc.tp = widest(cols);
  }
  pc.sp = rows * cols / pc.tp;
  // Ulysses moves heads, so it needs heads/tp divisible by sp; ring works for any split.
  pc.sp_mode = SpMode::Ring;
  pc.vae = 0;
  return pc;
}

Status validate(const ParallelConfig& pc, const MeshShape& mesh, const ModelTraits& model) {
  const std::string where =
      "parallel config " + pc.str() + " on mesh " + mesh.str() + (model.name.empty() ? "" : " for " + model.name);
  if (pc.ranks() != mesh.size())
    return make_error(where + ": cfg*sp*tp = " + std::to_string(pc.ranks()) + " must equal the mesh's " +
                      std::to_string(mesh.size()) + " ranks");
  if (pc.cfg != 1 && pc.cfg != 2) return make_error(where + ": cfg must be 1 or 2 (conditional and unconditional)");
  if (pc.cfg == 2 && !model.cfg_batch)
    return make_error(where +
                      ": cfg=2 needs a guidance batch (a negative prompt with true CFG, or a model "
                      "that runs classifier-free guidance); this run has none");
  if (model.uneven_heads_ok && model.heads < pc.tp)
    return make_error(where + ": the model's " + std::to_string(model.heads) +
                      " attention heads cannot cover tp=" + std::to_string(pc.tp) + " ranks");
  if (!model.uneven_heads_ok && !model.pad_heads && model.heads % pc.tp != 0)
    return make_error(where + ": the model's " + std::to_string(model.heads) +
                      " attention heads are not divisible by tp=" + std::to_string(pc.tp));
  if (pc.sp_mode == SpMode::Ulysses && (model.heads_for(pc.tp) / pc.tp) % pc.sp != 0)
    return make_error(where + ": Ulysses needs the " + std::to_string(model.heads_for(pc.tp) / pc.tp) +
                      " heads per TP rank divisible by sp=" + std::to_string(pc.sp) + " (use sp_mode=ring)");
  if (model.image_tokens > 0 && model.image_tokens < pc.sp)
    return make_error(where + ": " + std::to_string(model.image_tokens) +
                      " image tokens cannot be split over sp=" + std::to_string(pc.sp));
  if (pc.vae < 0 || pc.vae > mesh.size() || (pc.vae > 0 && mesh.size() % pc.vae != 0))
    return make_error(where + ": vae=" + std::to_string(pc.vae) + " must divide the mesh's " +
                      std::to_string(mesh.size()) + " ranks");
  return ok_status();
}

Result<Mesh> Mesh::create(std::unique_ptr<Communicator> world, const MeshShape& shape, const ParallelConfig& pc) {
  if (world->size() != shape.size())
    return make_error("--mesh " + shape.str() + " has " + std::to_string(shape.size()) + " ranks but " +
                      std::to_string(world->size()) + " processes were started (mpirun -np " +
                      std::to_string(shape.size()) + ")");
  if (pc.ranks() != shape.size())
    return make_error("parallel config " + pc.str() + " uses " + std::to_string(pc.ranks()) + " ranks; mesh " +
                      shape.str() + " has " + std::to_string(shape.size()));
  Mesh m;
  m.shape_ = shape;
  m.pc_ = pc;
  const int r = world->rank();
  const int tp_i = r % pc.tp, sp_i = (r / pc.tp) % pc.sp, cfg_i = r / (pc.tp * pc.sp);
  auto named = [](std::unique_ptr<Communicator> c, const char* n) {
    c->set_name(n);
    return std::shared_ptr<Communicator>(std::move(c));
  };
  m.row_ = named(world->split(r / shape.cols, r % shape.cols), "row");
  m.col_ = named(world->split(r % shape.cols, r / shape.cols), "col");
  m.tp_ = named(world->split(cfg_i * pc.sp + sp_i, tp_i), "tp");
  m.sp_ = named(world->split(cfg_i * pc.tp + tp_i, sp_i), "sp");
  m.cfg_ = named(world->split(sp_i * pc.tp + tp_i, cfg_i), "cfg");
  const int vae = pc.vae > 0 ? pc.vae : shape.size();
  m.vae_ = named(world->split(r / vae, r % vae), "vae");
  world->set_name("world");
  m.world_ = std::move(world);
  return m;
}

Mesh Mesh::single() {
  Mesh m;
  m.world_ = std::make_shared<LocalComm>();
  for (auto* p : {&m.row_, &m.col_, &m.cfg_, &m.sp_, &m.tp_, &m.vae_}) *p = std::make_shared<LocalComm>();
  m.row_->set_name("row");
  m.col_->set_name("col");
  m.cfg_->set_name("cfg");
  m.sp_->set_name("sp");
  m.tp_->set_name("tp");
  m.vae_->set_name("vae");
  return m;
}

Result<ParallelConfig> resolve_parallel_config(const MeshShape& shape, const std::string& overrides,
                                               const ModelTraits& model) {
  ParallelConfig pc = auto_parallel_config(shape, model);
  // Naming any of cfg/sp/tp replaces the automatic factoring: cfg and tp not named are 1, and sp not
  // named takes the remaining ranks.
  std::set<std::string> named;
  MD_TRY(pc, ParallelConfig::parse(overrides, pc, &named));
  if (named.count("cfg") || named.count("sp") || named.count("tp")) {
    if (!named.count("cfg")) pc.cfg = 1;
    if (!named.count("tp")) pc.tp = 1;
    if (!named.count("sp")) pc.sp = std::max(1, shape.size() / (pc.cfg * pc.tp));
  }
  MD_RETURN_IF_ERROR(validate(pc, shape, model));
  return pc;
}

Result<Mesh> make_mesh(const MeshShape& shape, const std::string& overrides, const ModelTraits& model) {
  MD_TRY(ParallelConfig pc, resolve_parallel_config(shape, overrides, model));
  if (shape.size() == 1) return Mesh::single();
  if (!mpi::available())
    return make_error("--mesh " + shape.str() + ": this meshdit was built without MPI (libopenmpi-dev): only the 1x1 " +
                      "mesh runs (one process); rebuild with MPI installed (tools/setup-debian.sh) for a mesh");
  return Mesh::create(world_communicator(), shape, pc);
}

}  // namespace meshdit
