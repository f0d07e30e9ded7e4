// Torch side of pair_style mlip: loads an exported mlip file and evaluates its energy model
// on the owned + ghost atoms of one MPI rank. No LAMMPS header may be included here.
#include "mlip_model.h"

#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <queue>
#include <tuple>
#include <sstream>
#include <stdexcept>
#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace mlip_lammps {
namespace {

constexpr const char *kFormatName = "mlip-potential";
constexpr int kFormatVersion = 1;

// A small JSON reader: enough for the metadata record mlip.export writes.
struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0.0;
  std::string text;
  std::vector<Json> items;
  std::map<std::string, Json> members;

  const Json *get(const std::string &key) const {
    auto found = members.find(key);
    return (kind == Object && found != members.end()) ? &found->second : nullptr;
  }
};

class JsonReader {
 public:
  explicit JsonReader(const std::string &source) : s_(source) {}

  Json document() {
    Json value = parse();
    skip();
    if (pos_ != s_.size()) fail("trailing characters");
    return value;
  }

 private:
  const std::string &s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string &what) const {
    throw std::runtime_error("invalid JSON at character " + std::to_string(pos_) + ": " + what);
  }
  void skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool take(char c) {
    skip();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!take(c)) fail(std::string("expected '") + c + "'");
  }
  bool literal(const char *word) {
    const std::string w(word);
    if (s_.compare(pos_, w.size(), w) == 0) {
      pos_ += w.size();
      return true;
    }
    return false;
  }
  std::string string_body() {
    expect('"');
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c == '\\') {
        if (pos_ >= s_.size()) fail("unterminated escape");
        char e = s_[pos_++];
        if (e == 'u') {  // keep non-ASCII escapes as '?': only ASCII fields are read
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          pos_ += 4;
          out += '?';
        } else {
          static const std::map<char, char> escapes = {{'n', '\n'}, {'t', '\t'}, {'r', '\r'},
                                                       {'b', '\b'}, {'f', '\f'}};
          auto found = escapes.find(e);
          out += found == escapes.end() ? e : found->second;
        }
      } else {
        out += c;
      }
    }
    expect('"');
    return out;
  }
  Json parse() {
    skip();
    if (pos_ >= s_.size()) fail("unexpected end");
    Json value;
    char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      value.kind = Json::Object;
      if (take('}')) return value;
      do {
        skip();
        std::string key = string_body();
        expect(':');
        value.members[key] = parse();
      } while (take(','));
      expect('}');
    } else if (c == '[') {
      ++pos_;
      value.kind = Json::Array;
      if (take(']')) return value;
      do value.items.push_back(parse());
      while (take(','));
      expect(']');
    } else if (c == '"') {
      value.kind = Json::String;
      value.text = string_body();
    } else if (literal("true")) {
      value.kind = Json::Bool;
      value.boolean = true;
    } else if (literal("false")) {
      value.kind = Json::Bool;
    } else if (literal("null")) {
      value.kind = Json::Null;
    } else {
      const char *start = s_.c_str() + pos_;
      char *end = nullptr;
      value.number = std::strtod(start, &end);
      if (end == start) fail("unexpected character");
      value.kind = Json::Number;
      pos_ += static_cast<size_t>(end - start);
    }
    return value;
  }
};

std::string first_line(const std::string &text) {
  std::string line = text.substr(0, text.find('\n'));
  return line.empty() ? "unknown error" : line;
}

// One line saying why an evaluation failed: running out of memory says so and what helps; a
// TorchScript interpreter error is reported by its last line (the error itself), not its header.
std::string evaluation_error(const std::string &text, int nall, bool chunked) {
  if (text.find("can't allocate memory") != std::string::npos ||
      text.find("out of memory") != std::string::npos)
    return "out of memory evaluating " + std::to_string(nall) + " atoms (owned + ghosts) on "
           "this rank" + (chunked ? std::string(" even in chunks: use a smaller chunk_atoms or more MPI ranks")
                                  : std::string(": use more MPI ranks, or pair_style mlip ... chunk_atoms N "
                                                "(e.g. 2000) to evaluate layer by layer in chunks"));
  if (text.rfind("The following operation failed in the TorchScript interpreter", 0) == 0) {
    std::istringstream lines(text);
    std::string line, last;
    while (std::getline(lines, line))
      if (line.find_first_not_of(" \t") != std::string::npos) last = line;
    if (!last.empty()) return last.substr(last.find_first_not_of(" \t"));
  }
  return first_line(text);
}

double number_field(const Json &meta, const std::string &key, const std::string &path) {
  const Json *value = meta.get(key);
  if (value == nullptr || value->kind != Json::Number)
    throw std::runtime_error(path + ": corrupt metadata (no number '" + key + "')");
  return value->number;
}

ModelInfo parse_info(const std::string &raw, const std::string &path) {
  if (raw.empty())
    throw std::runtime_error(path + ": not an mlip model file (TorchScript archive without mlip.json)");
  Json meta;
  try {
    meta = JsonReader(raw).document();
  } catch (const std::exception &err) {
    throw std::runtime_error(path + ": corrupt metadata in mlip.json (" + err.what() + ")");
  }
  const Json *format = meta.get("format");
  if (format == nullptr || format->kind != Json::String || format->text != kFormatName)
    throw std::runtime_error(path + ": not an mlip model file (metadata format is not " +
                             kFormatName + ")");
  const int version = static_cast<int>(number_field(meta, "format_version", path));
  if (version > kFormatVersion)
    throw std::runtime_error(path + ": model file format version " + std::to_string(version) +
                             " is newer than this plugin reads (" +
                             std::to_string(kFormatVersion) + "); rebuild it with mlip-lammps build");
  ModelInfo info;
  info.cutoff = number_field(meta, "cutoff", path);
  const Json *interactions = meta.get("num_interactions");
  if (interactions != nullptr && interactions->kind == Json::Null)
    throw std::runtime_error(path + ": this model is not local (its energies depend on the "
                                    "whole structure, e.g. LEFTNet's molecular frame), so it "
                                    "cannot run in LAMMPS");
  if (interactions != nullptr) {
    info.num_interactions = static_cast<int>(number_field(meta, "num_interactions", path));
  } else {  // files exported before the field existed: read the model's own config
    const Json *config = meta.get("model_config");
    const Json *layers = config ? config->get("num_layers") : nullptr;
    if (layers == nullptr || layers->kind != Json::Number)
      throw std::runtime_error(path + ": metadata names neither num_interactions nor "
                                      "model_config.num_layers (re-export the model)");
    info.num_interactions = static_cast<int>(layers->number);
  }
  info.receptive_field = info.num_interactions * info.cutoff;
  const Json *numbers = meta.get("atomic_numbers");
  if (numbers == nullptr || numbers->kind != Json::Array || numbers->items.empty())
    throw std::runtime_error(path + ": corrupt metadata (no 'atomic_numbers')");
  for (const Json &z : numbers->items) info.atomic_numbers.push_back(static_cast<int>(z.number));
  const Json *dtype = meta.get("model_dtype");
  if (dtype == nullptr || dtype->kind != Json::String)
    throw std::runtime_error(path + ": corrupt metadata (no 'model_dtype')");
  info.dtype = dtype->text;
  if (!(info.cutoff > 0.0) || info.num_interactions < 1)
    throw std::runtime_error(path + ": corrupt metadata (cutoff or num_interactions not positive)");
  return info;
}

// One GPU per rank on a node: the local rank from the MPI launcher's environment.
int local_rank() {
  for (const char *name : {"MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"}) {
    const char *value = std::getenv(name);
    if (value != nullptr) return std::atoi(value);
  }
  return 0;
}

torch::Device choose_device(const std::string &name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available())
      throw std::runtime_error("device " + name +
                               " requested, but torch finds no usable CUDA device (a CPU-only "
                               "torch build, no GPU, or no driver); use device cpu");
    if (name == "cuda") {
      const int count = static_cast<int>(torch::cuda::device_count());
      return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank() % count));
    }
    try {
      return torch::Device(name);
    } catch (const std::exception &) {
      throw std::runtime_error("device " + name + " is not a valid torch device name");
    }
  }
  throw std::runtime_error("unknown device '" + name + "' (use cpu, cuda or cuda:N)");
}

// As mlip.allocator.keep_freed_memory for the ASE calculator: glibc serves large tensors from
// the heap and keeps freed ones there, instead of mapping and page-faulting them every step
// (2-5x faster from about 1k atoms up). MLIP_KEEP_FREED_MEMORY=0 turns it off.
void keep_freed_memory() {
#if defined(__GLIBC__)
  const char *setting = std::getenv("MLIP_KEEP_FREED_MEMORY");
  if (setting != nullptr && std::string(setting) == "0") return;
  mallopt(M_MMAP_THRESHOLD, INT_MAX);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
#endif
}

// Gradients of the owned atoms' energy, from either evaluation path.
struct EnergyGradients {
  torch::Tensor energies;  // (nall,) float64 eV; only the first nlocal are owned atoms' energies
  torch::Tensor dpos;      // (nall, 3) dE/dx, float64 (undefined: no position dependence)
  torch::Tensor dshift;    // (E, 3) dE/dr_e per edge (undefined unless asked for)
};

// The model input of a graph: identity cell, so an edge's shift is added to its vector as is.
c10::Dict<std::string, torch::Tensor> graph_input(const torch::Tensor &pos,
                                                  const torch::Tensor &numbers,
                                                  const torch::Tensor &edge_index,
                                                  const torch::Tensor &shifts) {
  const auto device = pos.device();
  const int64_t n = pos.size(0);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device);
  c10::Dict<std::string, torch::Tensor> data;
  data.insert("positions", pos);
  data.insert("atomic_numbers", numbers);
  data.insert("cell", torch::eye(3, f64).reshape({1, 3, 3}));
  data.insert("pbc", torch::zeros({1, 3}, torch::TensorOptions().dtype(torch::kBool).device(device)));
  data.insert("edge_index", edge_index);
  data.insert("cell_shifts", shifts);
  data.insert("batch", torch::zeros({n}, i64));
  data.insert("num_atoms", torch::full({1}, n, i64));
  return data;
}

EnergyGradients whole_graph(torch::jit::Module &model, int nlocal, const torch::Tensor &positions,
                            const torch::Tensor &numbers, const torch::Tensor &edge_index,
                            const torch::Tensor &shifts, bool edge_grad) {
  torch::Tensor pos = positions.detach().requires_grad_(true);
  torch::Tensor edge_shifts = shifts.detach();
  if (edge_grad) edge_shifts.requires_grad_(true);
  auto result =
      model.forward({graph_input(pos, numbers, edge_index, edge_shifts)}).toGenericDict();
  EnergyGradients out;
  out.energies = result.at("energies").toTensor().to(torch::kFloat64);
  torch::Tensor local_energy = out.energies.slice(0, 0, nlocal).sum();
  std::vector<torch::Tensor> inputs{pos};
  if (edge_grad) inputs.push_back(edge_shifts);
  auto grads = torch::autograd::grad({local_energy}, inputs, {}, false, false, true);
  out.energies = out.energies.detach();
  out.dpos = grads[0];
  if (edge_grad) out.dshift = grads[1];
  return out;
}

// Receivers of layer-by-layer chunks: the owned atoms and every atom with an incoming edge, in
// slabs along the axis of largest extent (as mlip.chunked.slab_order): a chunk's senders lie in
// it and its neighbouring slabs, so few layer graphs wait for their backward at once.
std::vector<int64_t> receivers_in_space_order(int nlocal, const std::vector<int64_t> &count,
                                              const torch::Tensor &positions_cpu) {
  const int64_t nall = static_cast<int64_t>(count.size());
  const double *x = positions_cpu.data_ptr<double>();
  std::vector<int64_t> atoms;
  for (int64_t i = 0; i < nall; ++i)
    if (i < nlocal || count[i] > 0) atoms.push_back(i);
  if (atoms.empty()) return atoms;
  double lo[3], hi[3];
  for (int k = 0; k < 3; ++k) lo[k] = hi[k] = x[3 * atoms[0] + k];
  for (int64_t i : atoms)
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::min(lo[k], x[3 * i + k]);
      hi[k] = std::max(hi[k], x[3 * i + k]);
    }
  int axis = 0;
  for (int k = 1; k < 3; ++k)
    if (hi[k] - lo[k] > hi[axis] - lo[axis]) axis = k;
  std::stable_sort(atoms.begin(), atoms.end(),
                   [&](int64_t i, int64_t j) { return x[3 * i + axis] < x[3 * j + axis]; });
  return atoms;
}

// One chunk: its receivers first, then their other senders; the edges into its receivers.
struct Chunk {
  int64_t n_receivers = 0;
  torch::Tensor atoms;       // (n,) indices into the nall atoms, device
  torch::Tensor receivers;   // (n_receivers,) = atoms[:n_receivers], device
  torch::Tensor edges;       // (E_c,) edge ids, device
  torch::Tensor edge_index;  // (2, E_c) local indices, device
  std::vector<int> needs;    // chunks owning the receivers among its atoms (itself included)
};

std::vector<Chunk> plan_chunks(int nlocal, int64_t chunk_atoms, const torch::Tensor &edge_index,
                               const torch::Tensor &positions, torch::Device device) {
  const int64_t nall = positions.size(0);
  torch::Tensor index_cpu = edge_index.to(torch::kCPU).contiguous();
  const int64_t n_edges = index_cpu.size(1);
  const int64_t *receiver = index_cpu.data_ptr<int64_t>();
  const int64_t *sender = receiver + n_edges;
  std::vector<int64_t> count(nall, 0), start(nall + 1, 0), order(n_edges);
  for (int64_t e = 0; e < n_edges; ++e) ++count[receiver[e]];
  for (int64_t i = 0; i < nall; ++i) start[i + 1] = start[i] + count[i];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t e = 0; e < n_edges; ++e) order[fill[receiver[e]]++] = e;
  torch::Tensor positions_cpu = positions.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const std::vector<int64_t> atoms = receivers_in_space_order(nlocal, count, positions_cpu);

  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  std::vector<int64_t> local(nall, -1);
  std::vector<int> chunk_of(nall, -1);
  for (size_t k = 0; k < atoms.size(); ++k)
    chunk_of[atoms[k]] = static_cast<int>(k / static_cast<size_t>(chunk_atoms));
  std::vector<Chunk> chunks;
  for (size_t first = 0; first < atoms.size(); first += static_cast<size_t>(chunk_atoms)) {
    const size_t last = std::min(atoms.size(), first + static_cast<size_t>(chunk_atoms));
    std::vector<int64_t> members(atoms.begin() + first, atoms.begin() + last);
    for (size_t k = 0; k < members.size(); ++k) local[members[k]] = static_cast<int64_t>(k);
    std::vector<int64_t> edges, rows;
    for (size_t k = 0; k < last - first; ++k)
      for (int64_t p = start[members[k]]; p < start[members[k] + 1]; ++p) edges.push_back(order[p]);
    rows.reserve(2 * edges.size());
    for (int64_t e : edges) {
      const int64_t j = sender[e];
      if (local[j] < 0) {
        local[j] = static_cast<int64_t>(members.size());
        members.push_back(j);
      }
    }
    for (int64_t e : edges) rows.push_back(local[receiver[e]]);
    for (int64_t e : edges) rows.push_back(local[sender[e]]);
    for (int64_t i : members) local[i] = -1;
    Chunk chunk;
    for (int64_t i : members)
      if (chunk_of[i] >= 0) chunk.needs.push_back(chunk_of[i]);
    std::sort(chunk.needs.begin(), chunk.needs.end());
    chunk.needs.erase(std::unique(chunk.needs.begin(), chunk.needs.end()), chunk.needs.end());
    chunk.n_receivers = static_cast<int64_t>(last - first);
    const int64_t n_edges_chunk = static_cast<int64_t>(edges.size());
    chunk.atoms = torch::tensor(members, i64).to(device);
    chunk.receivers = chunk.atoms.slice(0, 0, chunk.n_receivers);
    chunk.edges = torch::tensor(edges, i64).to(device);
    chunk.edge_index = torch::tensor(rows, i64).reshape({2, n_edges_chunk}).to(device);
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

// The layer-by-layer tasks (as mlip.chunked.wavefront_schedule): Forward t < T - 1 computes
// h_{t+1} of a chunk's receivers once every chunk in its needs has done Forward t - 1; Last is the
// last layer's forward and backward at once; Backward t < T - 1 runs once dE/dh_{t+1} of its
// receivers is complete (the backwards of layer t + 1 of every chunk that reads them). Ready
// backwards go first, then forwards of the highest layer; a new chunk's layer 0 starts only when
// nothing else is ready, so a layer's graph waits for its backward only while its neighbours pass.
enum class Task { Forward, Backward, Last };
struct Step {
  Task kind;
  int t;
  int c;
};

std::vector<Step> wavefront_schedule(const std::vector<Chunk> &chunks, int hops) {
  const int n = static_cast<int>(chunks.size());
  std::vector<std::vector<int>> users(n);
  for (int c = 0; c < n; ++c)
    for (int j : chunks[c].needs) users[j].push_back(c);
  std::vector<std::vector<size_t>> forward_wait(hops), backward_wait(hops);
  for (int t = 0; t < hops; ++t)
    for (int c = 0; c < n; ++c) {
      forward_wait[t].push_back(chunks[c].needs.size());
      backward_wait[t].push_back(users[c].size());
    }
  // (0 backward | 1 forward, -t, c), smallest first
  std::priority_queue<std::tuple<int, int, int>, std::vector<std::tuple<int, int, int>>,
                      std::greater<std::tuple<int, int, int>>>
      ready;
  std::vector<Step> steps;
  auto backward_done = [&](int t, int c) {
    if (t == 0) return;
    for (int source : chunks[c].needs)
      if (--backward_wait[t - 1][source] == 0) ready.emplace(0, -(t - 1), source);
  };
  auto forward = [&](int t, int c) {
    if (t == hops - 1) {
      steps.push_back({Task::Last, t, c});
      backward_done(t, c);
      return;
    }
    steps.push_back({Task::Forward, t, c});
    for (int user : users[c])
      if (--forward_wait[t + 1][user] == 0) ready.emplace(1, -(t + 1), user);
  };
  const size_t total = static_cast<size_t>(2 * hops - 1) * static_cast<size_t>(n);
  int next_chunk = 0;
  while (steps.size() < total) {
    if (ready.empty()) {
      if (next_chunk >= n) throw std::runtime_error("layer-by-layer schedule stalled (a bug)");
      forward(0, next_chunk++);
      continue;
    }
    const auto [kind, minus_t, c] = ready.top();
    ready.pop();
    if (kind == 1) {
      forward(-minus_t, c);
    } else {
      steps.push_back({Task::Backward, -minus_t, c});
      backward_done(-minus_t, c);
    }
  }
  return steps;
}

// Layer by layer over chunks of receivers, as mlip.chunked's layer-by-layer method, in the order
// of wavefront_schedule. A forward (t < T - 1) stores h_{t+1} of its receivers; with keep_graphs
// its autograd graph waits for the chunk's backward, otherwise it runs without autograd and the
// backward builds the layer again (least memory: one layer of one chunk). A backward takes one
// gradient of the chunk's energy contributions plus <dE/dh_{t+1}, h_{t+1}> over its receivers and
// passes dE/dh_t to its senders. Atoms that receive no edge (the outermost ghosts) keep zero
// features beyond layer 0: they only send to ghosts whose outputs no owned energy depends on.
EnergyGradients layer_by_layer(torch::jit::Module &model, int num_layers, int nlocal,
                               const std::vector<Chunk> &chunks, const torch::Tensor &positions,
                               const torch::Tensor &numbers, const torch::Tensor &shifts,
                               bool edge_grad, bool keep_graphs) {
  const int64_t nall = positions.size(0);
  const auto device = positions.device();
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device);
  torch::jit::Method initial_features = model.get_method("initial_features");
  torch::jit::Method layer_forward = model.get_method("layer_forward");
  torch::jit::Method atom_energies = model.get_method("atom_energies");

  // inputs[t]: (D_t, nall, C) input features of layer t >= 1 (inputs[0] stays undefined);
  // grads[t]: dE/dh_t. Each pair is freed once its layer is done.
  std::vector<torch::Tensor> inputs(num_layers), grads(num_layers);
  std::vector<torch::Tensor> contributions(num_layers);  // (nall,) per layer, model dtype

  struct Built {
    torch::Tensor pos, edge_shifts, layer_in, out, contribution;
  };
  auto build = [&](int t, const Chunk &chunk, bool grad) {
    c10::AutoGradMode mode(grad);
    Built b;
    b.pos = positions.index_select(0, chunk.atoms).detach();
    b.edge_shifts = shifts.index_select(0, chunk.edges).detach();
    if (grad) b.pos.requires_grad_(true);
    if (grad && edge_grad) b.edge_shifts.requires_grad_(true);
    auto data = graph_input(b.pos, numbers.index_select(0, chunk.atoms), chunk.edge_index,
                            b.edge_shifts);
    if (t == 0) {
      b.layer_in = initial_features({data}).toTensor();  // no position dependence
    } else {
      b.layer_in = inputs[t].index_select(1, chunk.atoms);
      if (grad) b.layer_in.requires_grad_(true);
    }
    auto result = layer_forward({t, b.layer_in, data, chunk.n_receivers}).toTuple();
    b.out = result->elements()[0].toTensor();
    b.contribution = result->elements()[1].toTensor();
    return b;
  };
  auto record = [&](int t, const Chunk &chunk, const Built &b) {
    if (!contributions[t].defined()) contributions[t] = torch::zeros({nall}, b.contribution.options());
    contributions[t].index_copy_(0, chunk.receivers, b.contribution.detach());
    if (t + 1 < num_layers) {
      if (!inputs[t + 1].defined()) {
        inputs[t + 1] = torch::zeros({b.out.size(0), nall, b.out.size(2)}, b.out.options());
        grads[t + 1] = torch::zeros_like(inputs[t + 1]);
      }
      inputs[t + 1].index_copy_(1, chunk.receivers, b.out.detach());
    }
  };

  c10::Dict<std::string, torch::Tensor> whole;
  whole.insert("atomic_numbers", numbers);
  whole.insert("batch", torch::zeros({nall}, i64));
  whole.insert("num_atoms", torch::full({1}, nall, i64));
  // s_i = dE/de_i for owned atoms (the model's energy scale), 0 for ghosts
  torch::Tensor probe = torch::zeros({nall}, f64.requires_grad(true));
  torch::Tensor probe_energy =
      atom_energies({probe, whole}).toGenericDict().at("energy").toTensor().sum();
  torch::Tensor scale = torch::autograd::grad({probe_energy}, {probe})[0].detach().clone();
  scale.slice(0, nlocal, nall).zero_();

  EnergyGradients out;
  out.dpos = torch::zeros({nall, 3}, f64);
  if (edge_grad) out.dshift = torch::zeros({shifts.size(0), 3}, f64);
  const std::vector<Step> steps = wavefront_schedule(chunks, num_layers);
  std::vector<size_t> remaining(num_layers, 0);
  for (const Step &step : steps) ++remaining[step.t];
  std::map<std::pair<int, int>, Built> kept;
  for (const Step &step : steps) {
    const int t = step.t;
    const Chunk &chunk = chunks[step.c];
    if (step.kind == Task::Forward) {
      Built b = build(t, chunk, keep_graphs);
      record(t, chunk, b);
      if (keep_graphs) kept.emplace(std::make_pair(t, step.c), std::move(b));
      --remaining[t];
      continue;
    }
    Built b;
    auto found = kept.find({t, step.c});
    if (found != kept.end()) {
      b = std::move(found->second);
      kept.erase(found);
    } else {
      b = build(t, chunk, true);
      if (step.kind == Task::Last) record(t, chunk, b);
    }
    std::vector<torch::Tensor> outputs{b.contribution};
    std::vector<torch::Tensor> grad_outputs{
        scale.index_select(0, chunk.receivers).to(b.contribution.scalar_type())};
    if (t + 1 < num_layers) {
      outputs.push_back(b.out);
      grad_outputs.push_back(grads[t + 1].index_select(1, chunk.receivers));
    }
    std::vector<torch::Tensor> wrt{b.pos};
    if (edge_grad) wrt.push_back(b.edge_shifts);
    if (t > 0) wrt.push_back(b.layer_in);
    auto g = torch::autograd::grad(outputs, wrt, grad_outputs, false, false, true);
    if (g[0].defined()) out.dpos.index_add_(0, chunk.atoms, g[0].to(torch::kFloat64));
    if (edge_grad && g[1].defined()) out.dshift.index_add_(0, chunk.edges, g[1].to(torch::kFloat64));
    if (t > 0 && g.back().defined()) grads[t].index_add_(1, chunk.atoms, g.back());
    if (--remaining[t] == 0) {  // layer t is done: its inputs and dE/dh_{t+1} are not needed
      inputs[t] = torch::Tensor();
      if (t + 1 < num_layers) grads[t + 1] = torch::Tensor();
    }
  }
  torch::Tensor atomic = contributions[0];
  for (int t = 1; t < num_layers; ++t) atomic = atomic + contributions[t];  // as forward sums
  {
    torch::NoGradGuard no_grad;
    out.energies =
        atom_energies({atomic, whole}).toGenericDict().at("energies").toTensor().to(torch::kFloat64);
  }
  return out;
}

}  // namespace

struct Model::Impl {
  ModelInfo info;
  torch::Device device{torch::kCPU};
  torch::jit::Module energy_model;
  int64_t chunk_atoms = 0;
  bool keep_graphs = true;
  int last_chunks = 0;
};

Model::Model(const std::string &path, const std::string &device, int threads)
    : impl_(std::make_unique<Impl>()) {
  if (threads < 1) throw std::runtime_error("threads must be >= 1");
  at::set_num_threads(threads);
  impl_->device = choose_device(device);
  if (impl_->device.is_cpu()) keep_freed_memory();
  if (!std::ifstream(path).good()) throw std::runtime_error(path + ": no such model file");
  torch::jit::ExtraFilesMap extra{{"mlip.json", ""}};
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, impl_->device, extra);
  } catch (const std::exception &err) {
    throw std::runtime_error(path + ": corrupt or foreign model file, not a TorchScript archive "
                                    "torch can load (" +
                             first_line(err.what()) + ")");
  }
  impl_->info = parse_info(extra["mlip.json"], path);
  if (!module.hasattr("energy_model"))
    throw std::runtime_error(path + ": not an mlip model file (no energy_model submodule)");
  impl_->energy_model = module.attr("energy_model").toModule();
  impl_->energy_model.eval();
  for (auto parameter : impl_->energy_model.parameters()) parameter.set_requires_grad(false);
}

Model::~Model() = default;

const ModelInfo &Model::info() const { return impl_->info; }

void Model::set_chunk_atoms(int64_t atoms) {
  if (atoms < 0) throw std::runtime_error("chunk_atoms must be >= 0 (0: no chunks), got " +
                                          std::to_string(atoms));
  if (atoms > 0)
    for (const char *name : {"initial_features", "layer_forward", "atom_energies"})
      if (!impl_->energy_model.find_method(name))
        throw std::runtime_error(
            std::string("this model cannot be evaluated in chunks (it exports no ") + name +
            " method: not a GMEP model, or a GMEP file exported before layer-by-layer "
            "evaluation existed: re-export it with mlip-export OLD.pt -o NEW.pt); drop "
            "chunk_atoms");
  impl_->chunk_atoms = atoms;
}

int64_t Model::chunk_atoms() const { return impl_->chunk_atoms; }

void Model::set_keep_graphs(bool keep) { impl_->keep_graphs = keep; }

int Model::last_chunks() const { return impl_->last_chunks; }

void Model::evaluate(int nlocal, int nall, const double *positions,
                     const int64_t *atomic_numbers, const std::vector<int64_t> &receivers,
                     const std::vector<int64_t> &senders, const std::vector<double> &shifts,
                     bool want_virial,
                     bool want_atom_virial, Evaluation &out) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const auto device = impl_->device;
  const int64_t n_edges = static_cast<int64_t>(receivers.size());
  try {
    torch::Tensor pos =
        torch::from_blob(const_cast<double *>(positions), {nall, 3}, f64).to(device, false, true);
    torch::Tensor numbers =
        torch::from_blob(const_cast<int64_t *>(atomic_numbers), {nall}, i64).to(device, false, true);
    torch::Tensor receiver =
        torch::from_blob(const_cast<int64_t *>(receivers.data()), {n_edges}, i64);
    torch::Tensor sender = torch::from_blob(const_cast<int64_t *>(senders.data()), {n_edges}, i64);
    torch::Tensor edge_index = torch::stack({receiver, sender}).to(device);
    // The shifts enter each edge vector as ``cell_shifts @ cell`` with an identity cell, so
    // their gradient is the per-edge force dE/dr_ij, from which the virial follows exactly.
    const bool edge_grad = want_virial || want_atom_virial;
    torch::Tensor edge_shifts =
        torch::from_blob(const_cast<double *>(shifts.data()), {n_edges, 3}, f64).to(device, false, true);
    EnergyGradients result;
    std::vector<Chunk> chunks;
    if (impl_->chunk_atoms > 0 && nall > impl_->chunk_atoms)
      chunks = plan_chunks(nlocal, impl_->chunk_atoms, edge_index, pos, device);
    if (chunks.size() > 1) {
      result = layer_by_layer(impl_->energy_model, impl_->info.num_interactions, nlocal, chunks,
                              pos, numbers, edge_shifts, edge_grad, impl_->keep_graphs);
    } else {
      result = whole_graph(impl_->energy_model, nlocal, pos, numbers, edge_index, edge_shifts,
                           edge_grad);
    }
    impl_->last_chunks = std::max<int>(1, static_cast<int>(chunks.size()));

    torch::Tensor local = result.energies.slice(0, 0, nlocal).to(torch::kCPU).contiguous();
    out.energy = local.sum().item<double>();
    out.energies.assign(local.data_ptr<double>(), local.data_ptr<double>() + nlocal);
    torch::Tensor forces = result.dpos.defined() ? -result.dpos : torch::zeros_like(pos);
    forces = forces.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    out.forces.assign(forces.data_ptr<double>(), forces.data_ptr<double>() + 3 * nall);

    if (edge_grad) {
      torch::NoGradGuard no_grad;
      torch::Tensor g =
          result.dshift.defined() ? result.dshift.detach() : torch::zeros_like(edge_shifts);
      torch::Tensor p = pos.detach();
      torch::Tensor vectors = p.index_select(0, edge_index[1]) - p.index_select(0, edge_index[0]) +
                              edge_shifts;
      // W = -sum_e r_e (x) dE/dr_e, rows xx yy zz xy xz yz (symmetrised off-diagonals)
      torch::Tensor w = -(vectors.unsqueeze(2) * g.unsqueeze(1));  // (E, 3, 3)
      torch::Tensor voigt = torch::stack(
          {w.select(1, 0).select(1, 0), w.select(1, 1).select(1, 1), w.select(1, 2).select(1, 2),
           0.5 * (w.select(1, 0).select(1, 1) + w.select(1, 1).select(1, 0)),
           0.5 * (w.select(1, 0).select(1, 2) + w.select(1, 2).select(1, 0)),
           0.5 * (w.select(1, 1).select(1, 2) + w.select(1, 2).select(1, 1))},
          1);  // (E, 6)
      if (want_virial) {
        torch::Tensor total = voigt.sum(0).to(torch::kCPU).contiguous();
        for (int k = 0; k < 6; ++k) out.virial[k] = total.data_ptr<double>()[k];
      }
      if (want_atom_virial) {
        torch::Tensor half = 0.5 * voigt;
        torch::Tensor per_atom = torch::zeros({nall, 6}, f64.device(device));
        per_atom.index_add_(0, edge_index[0], half);
        per_atom.index_add_(0, edge_index[1], half);
        per_atom = per_atom.to(torch::kCPU).contiguous();
        out.atom_virial.assign(per_atom.data_ptr<double>(),
                               per_atom.data_ptr<double>() + 6 * nall);
      }
    }
  } catch (const c10::Error &err) {
    throw std::runtime_error("model evaluation failed: " +
                             evaluation_error(err.what_without_backtrace(), nall, impl_->chunk_atoms > 0));
  } catch (const std::exception &err) {
    throw std::runtime_error("model evaluation failed: " +
                             evaluation_error(err.what(), nall, impl_->chunk_atoms > 0));
  }
}

}  // namespace mlip_lammps
