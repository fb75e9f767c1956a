// `ttt train`: pre-training (fa, swa) and meta-learning (ttt-e2e) on token files, with
// AdamW, checkpoints that hold everything a run needs to continue exactly, a JSONL metrics
// log and validation.
//
// A run lives in one directory:
//   config.json              the training config (the model config under "model")
//   checkpoint.safetensors   parameters, AdamW moments, step, elapsed time, configs; one
//                            file written atomically, so a crash never tears it
//   model.safetensors        the parameters alone, for `ttt eval` and friends
//   metrics.jsonl            one JSON object per step (validation loss where measured)
//
// Data parallelism: a Trainer given a JobRank is one rank of a job. Each rank accumulates its
// share of every step's batch (sequences rank, rank + N, ... of the same deterministic
// stream), gradients are summed over the ranks, and every rank takes the same AdamW step:
// N ranks give one process's losses and weights, up to the order of fp32 sums. Rank 0 alone
// writes the run directory; checkpoints hold no trace of the world size.
#pragma once
#include <torch/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/token_dataset.h"
#include "model/checkpoint.h"
#include "train/adamw.h"
#include "train/distributed.h"
#include "train/train_config.h"
#include "ttt/sequence_gradient.h"

namespace ttt {

struct StepReport {
  int64_t step = 0;  // steps done, this one included
  int64_t total_steps = 0;
  double loss = 0;   // mean training loss of the batch (before the update)
  double lr = 0;
  double ilr_mult = 1;
  double grad_norm = 0;  // before clipping
  double tokens_per_s = 0;
  // Seconds of the step's update: clipping and AdamW, their GPU work and the moments' copies
  // with host moments included.
  double update_s = 0;
  double elapsed_s = 0;  // since the run began, across resumes
  std::optional<double> val_loss;
  // On a GPU: the step's peak memory held by tensors, and the peak held through PyTorch's
  // allocator (tensors, its cache and the captured chunk graphs' pools, whose tensors the first
  // figure counts only in the step that captures them): the one to set beside the GPU's size,
  // less the CUDA context's few hundred MiB.
  std::optional<double> gpu_peak_gib, gpu_reserved_gib;
  // A checkpoint is saved after this report (3B's takes about a minute).
  bool saving = false;
};

// The files a run's save writes, and those its directory holds now (0: none).
struct SaveSizes {
  uint64_t checkpoint = 0, model = 0;
  uint64_t existing_checkpoint = 0, existing_model = 0;
};
// Bytes the run directory's filesystem needs free for the next `saves` saves: each writes the
// checkpoint, then the model, whole beside the file it then replaces, so from the second save
// on both files are there twice for a while.
uint64_t disk_needed_for_saves(const SaveSizes& sizes, int64_t saves);
// Throws ttt::Error where `free_bytes` falls short of that: `context`, then `dir`, the sizes
// and the room missing, then `remedy` (and, where one save fits but not two, saving only at
// the end). So a run learns it before hours of training, not at their end.
void check_room_to_save(const std::string& dir, const SaveSizes& sizes, int64_t saves, uint64_t free_bytes,
                        const std::string& context, const std::string& remedy);
// The saves a run of `steps` steps makes after `steps_done`: every `checkpoint_every` steps
// (0: none) and at the last.
int64_t planned_saves(int64_t steps, int64_t steps_done, int64_t checkpoint_every);

// Whether AdamW's moments, kept on the host (--moments-on-host), go in pinned memory
// (AdamWOptions::pin_host_moments; 3B at 8K: 1.65 s a step against 5.59 pageable): where the
// sequence's gradient parks nothing there (the pinned budget of ttt/sequence_gradient.h goes
// unused) and the moments of `ranks_here` ranks take at most 60% of `host_bytes`, the parking's
// own bound.
bool pin_host_moments(bool gradient_parks, int64_t moment_bytes, int64_t ranks_here, int64_t host_bytes);
// moments_on_host "auto": whether the moments wait on the host, given the bytes of the
// parameters, their gradients and AdamW's two moments and the GPU's memory (none: not a GPU).
// Where those take more than 45% of it, the sequence's gradient (3B at 8K: about 46 GiB beside
// them) would not fit beside the moments: 3B on an 80 GB H100 (54%), not on an H200 (31%).
bool moments_on_host_by_default(int64_t training_state_bytes, std::optional<int64_t> device_bytes);
// What a run of `config` that ran out of GPU memory in a step may change to fit, as a sentence:
// its moments (`moment_bytes`) in host memory where they are not (`moments_on_host`), ttt-e2e's
// tail of one chunk where it is longer or left to the engine, then a shorter sequence.
std::string out_of_memory_advice(const TrainConfig& config, bool ttt_e2e, bool moments_on_host, int64_t moment_bytes);

class Trainer {
 public:
  // A new run in `out_dir` (created if missing). A directory that already holds a
  // checkpoint is an error: resume it, or choose another.
  // With `job`, this process is one rank of that job (every rank calls start or resume alike).
  static std::unique_ptr<Trainer> start(const TrainConfig& config, const std::string& out_dir,
                                        const std::optional<JobRank>& job = std::nullopt);
  // Continues the run in `out_dir`. `overrides` holds the training keys the user set again
  // (a JSON object, possibly empty): those that shape training must keep their saved values
  // (an error lists the ones that differ); reporting keys (log_every, eval_every,
  // val_sequences, val_tokens, checkpoint_every) may change.
  static std::unique_ptr<Trainer> resume(const std::string& out_dir, const nlohmann::json& overrides,
                                         const std::optional<JobRank>& job = std::nullopt);

  enum class Outcome { kFinished, kStopped };
  // Trains up to config().steps, reporting every step; checkpoints every checkpoint_every
  // steps and at the end. `stop_requested` is polled between sequences: when it returns
  // true the step in flight is dropped, a checkpoint is saved and kStopped returned.
  Outcome run(const std::function<void(const StepReport&)>& on_step, const std::function<bool()>& stop_requested);

  // The pieces of a step, public for tests.
  // This rank's sequences of the step's batch (all of them for a process of its own).
  std::vector<torch::Tensor> batch(int64_t step) const;
  // Zeroes the gradients, then accumulates the batch-mean loss's gradient of `step` into the
  // parameters' .grad (summed over the ranks); returns the mean loss, or nothing if
  // `stop_requested` fired (on any rank: they agree at the end of the step).
  std::optional<double> accumulate_gradients(int64_t step, const std::function<bool()>& stop_requested = {});
  // Mean loss of the validation sequences by the model's own procedure (inner LR multiplier 1).
  double validation_loss() const;
  void save_checkpoint();
  // What a save writes (its files' sizes, a little over, for their headers) and what the run
  // directory holds now.
  SaveSizes save_sizes() const;

  const TrainConfig& config() const { return config_; }
  const Model& model() const { return model_; }
  const AdamW& optimizer() const { return *optimizer_; }
  // The model config's keys that differ from those of the `init` checkpoint, as
  // "key old -> new" (empty for a fresh model or the checkpoint's own config).
  const std::vector<std::string>& changed_from_init() const { return changed_from_init_; }
  int64_t steps_done() const { return step_; }
  const std::string& out_dir() const { return out_dir_; }
  // Rank 0 of a job, or a process of its own: the one that writes and reports.
  bool is_main_rank() const { return !ranks_ || ranks_->rank() == 0; }
  int world_size() const { return ranks_ ? ranks_->world_size() : 1; }

 private:
  Trainer(TrainConfig config, Model model, std::string out_dir, const std::optional<JobRank>& job);
  void open_data();
  // Fails naming the first setting the ranks disagree on, then gives every rank rank 0's weights.
  void check_ranks_agree();
  // Whether the disk holds the next `saves` saves (check_room_to_save; no check where the
  // system cannot tell the free space). Rank 0 looks; every rank of a job throws its verdict,
  // rather than the others waiting for rank 0 in the next collective. A barrier of the job's ranks.
  void check_disk_room(int64_t saves, const std::string& context, const std::string& remedy) const;
  void append_metrics(const StepReport& report) const;
  double elapsed_s() const;
  // For a run that fails: whether a checkpoint stays to resume from.
  std::string saved_so_far() const;
  // Clips the accumulated gradient to grad_clip, takes the AdamW step; returns the norm before clipping.
  double clip_and_update(double lr);

  TrainConfig config_;
  Model model_;
  std::string out_dir_;
  std::unique_ptr<Communicator> ranks_;  // the job's ranks; null for a process of its own
  int64_t ranks_on_host_ = 1;            // the job's ranks on this host, sharing its memory
  std::unique_ptr<TokenDataset> train_data_, val_data_;
  std::unique_ptr<AdamW> optimizer_;
  GradientBuffer gradients_;
  // On a GPU, the gradient of a sequence replayed as a CUDA graph (made at the first step;
  // it adds into gradients_' views, which it takes as its own buffers).
  std::unique_ptr<GradientGraphs> gradient_graphs_;
  std::vector<std::string> changed_from_init_;
  int64_t step_ = 0;
  std::optional<int64_t> saved_step_;  // the step of the run directory's checkpoint, if any
  double elapsed_before_ = 0;          // seconds spent by earlier sessions of this run
  std::chrono::steady_clock::time_point session_start_ = std::chrono::steady_clock::now();
};

}  // namespace ttt
