// `meshdit plan`: what a model costs on a device mesh, per rank, before running it: the weights each rank
// holds, the peak activations of one transformer forward, the bytes of every collective per denoising
// step, and a predicted step time from a FLOP throughput and a link bandwidth.
//
// The cost model (all of it is in plan.cpp, next to the formulas):
//   * Weights: the diffusers tensors of the transformer, from its config. Tensor parallelism shards the
//     attention q/k/v/out projections, the feed-forward in/out linears and the adaptive-norm modulation
//     linears 1/tp (column-parallel: weight rows and bias; row-parallel: weight columns, bias replicated);
//     embedders, the final layer and the norms are replicated.
//   * Activations: the largest live set of one forward on a rank (see peak_block_elems in plan.cpp).
//   * Communication per step: one forward per step (the guidance batch of 2 runs as one forward of batch
//     2 when cfg=1, as two halves of batch 1 when cfg=2). Payloads are the logical tensors; the bytes a
//     rank sends are payload x the ring-algorithm factor: 2(n-1)/n for all-reduce, (n-1)/n for all-gather
//     and all-to-all, 1 per ring K/V pass.
//   * Time: FLOPs per rank / throughput + bytes sent / link bandwidth per collective, serially, except the
//     ring-attention K/V passes, which overlap the attention they feed (per attention: max(attention
//     compute, K/V passes)). Latency, kernel efficiency differences and the VAE/text encoders are ignored.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/mesh.h"

namespace meshdit {

struct PlanRequest {
  std::string model = "flux-dev";  // a built-in name (plan_model_names()) or a diffusers folder
  std::string mesh = "1x1";        // RxC
  std::string parallel;            // overrides of the automatic config ("tp=2,sp_mode=ulysses"); "" = automatic
  int64_t width = 0, height = 0;   // pixels; 0 = the model's default
  int64_t frames = 0;              // video models; 0 = default
  int64_t text_tokens = 0;         // 0 = default
  double link_gbps = 10.0;         // GB/s (1e9 bytes/s) per rank and link
  double tflops = 0.2;             // per rank (default: measured CPU figure, 2 cores, bench/README.md)
  int dtype_bytes = 2;             // bytes per weight element (bf16)
  int act_bytes = 4;               // bytes per activation element and per message element (the engine: f32)
};

// The built-in model names.
std::vector<std::string> plan_model_names();

enum class PlanShard { Replicated, Column, Row };         // TP split of a tensor: none, dim 0, dim 1
enum class PlanTokens { None, Image, Text, Joint, One };  // rows a weight multiplies (FLOPs); None: not a matmul

// One tensor of the transformer (diffusers names and shapes).
struct PlanWeight {
  std::string name;
  std::vector<int64_t> shape;
  PlanShard shard = PlanShard::Replicated;
  PlanTokens tokens = PlanTokens::None;
  int64_t numel() const;
  int64_t local_numel(int tp) const;  // elements one TP rank holds
};

// One kind of collective of one rank, per denoising step.
struct PlanComm {
  std::string kind;   // tp_all_reduce, tp_qk_norm_all_reduce, adaln_all_gather, sp_ring_kv, sp_ulysses_all_to_all,
                      // sp_final_gather, cfg_combine_all_gather
  std::string group;  // tp, sp or cfg
  int group_size = 1;
  int64_t calls = 0;          // per step
  int64_t payload_bytes = 0;  // sum of the logical tensors (all-gather: the gathered result)
  double factor = 0;          // sent = payload x factor
  int64_t sent_bytes = 0;     // what this rank puts on its link
  double seconds = 0;         // sent / link bandwidth
  bool overlapped = false;    // hidden under attention compute where it is shorter (ring K/V passes)
};

struct PlanRank {
  int rank = 0, row = 0, col = 0;
  int cfg_index = 0, sp_index = 0, tp_index = 0;
  int64_t image_tokens = 0;  // this rank's shard of the image/video tokens
  int64_t weight_bytes = 0;
  int64_t activation_bytes = 0;  // peak of one forward
  double flops = 0;              // per step
  double compute_s = 0;          // flops / throughput
  double comm_serial_s = 0;      // collectives that are not overlapped
  double comm_exposed_s = 0;     // the part of the ring K/V passes longer than the attention they overlap
  double step_s = 0;             // compute + serial + exposed
  std::vector<PlanComm> comm;
  int64_t sent_bytes() const;
  double comm_s() const;  // all communication time, overlapped or not
};

struct Plan {
  PlanRequest request;
  std::string model;        // name as given ("flux-dev", or the folder)
  std::string arch;         // flux, sd3 or wan
  std::string description;  // one line: blocks, heads, dim
  MeshShape mesh;
  ParallelConfig parallel;
  bool automatic = true;  // no overrides
  int64_t width = 0, height = 0, frames = 1;
  int64_t image_tokens = 0, text_tokens = 0;
  int64_t batch = 1;  // forward batch per step over the whole mesh (2 with a guidance batch)
  int64_t dim = 0, heads = 0, head_dim = 0;
  int64_t attentions = 0;  // attentions over the image tokens per forward (SP collectives run in each)
  std::vector<PlanWeight> weights;
  int64_t params = 0;              // elements of all weights
  int64_t total_weight_bytes = 0;  // unsharded
  std::vector<PlanRank> ranks;
  double step_s = 0;                // slowest rank
  double single_device_step_s = 0;  // the same model and size on 1x1
  int64_t single_device_activation_bytes = 0;

  // A human-readable report: header, assumptions, the ranks (identical ranks grouped unless per_rank),
  // the mesh layout and the collectives of the slowest rank.
  std::string table(bool per_rank = false) const;
  std::string json() const;
};

// Errors: an unknown model or unreadable folder, an unsupported transformer class, a bad mesh string,
// overrides that do not parse, a config validate() rejects (the same message a run would give), sizes that
// do not fit the model.
Result<Plan> make_plan(const PlanRequest& req);

}  // namespace meshdit
