// Torch side of pair_style mlip: loads an exported mlip file and evaluates its energy model
// on the owned + ghost atoms of one MPI rank. No LAMMPS header may be included here.
#include "mlip_model.h"

#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cctype>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

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

}  // namespace

struct Model::Impl {
  ModelInfo info;
  torch::Device device{torch::kCPU};
  torch::jit::Module energy_model;
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
    pos.requires_grad_(true);
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
    if (edge_grad) edge_shifts.requires_grad_(true);
    c10::Dict<std::string, torch::Tensor> data;
    data.insert("positions", pos);
    data.insert("atomic_numbers", numbers);
    data.insert("cell", torch::eye(3, f64.device(device)).reshape({1, 3, 3}));
    data.insert("pbc", torch::zeros({1, 3}, torch::TensorOptions().dtype(torch::kBool).device(device)));
    data.insert("edge_index", edge_index);
    data.insert("cell_shifts", edge_shifts);
    data.insert("batch", torch::zeros({nall}, i64.device(device)));
    data.insert("num_atoms", torch::full({1}, static_cast<int64_t>(nall), i64.device(device)));
    auto result = impl_->energy_model.forward({data}).toGenericDict();
    torch::Tensor energies = result.at("energies").toTensor().to(torch::kFloat64);
    torch::Tensor local_energy = energies.slice(0, 0, nlocal).sum();
    std::vector<torch::Tensor> inputs{pos};
    if (edge_grad) inputs.push_back(edge_shifts);
    auto grads = torch::autograd::grad({local_energy}, inputs, {}, false, false, true);

    out.energy = local_energy.item<double>();
    torch::Tensor forces = grads[0].defined() ? -grads[0] : torch::zeros_like(pos);
    forces = forces.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    out.forces.assign(forces.data_ptr<double>(), forces.data_ptr<double>() + 3 * nall);
    torch::Tensor local = energies.slice(0, 0, nlocal).detach().to(torch::kCPU).contiguous();
    out.energies.assign(local.data_ptr<double>(), local.data_ptr<double>() + nlocal);

    if (edge_grad) {
      torch::Tensor g = grads[1].defined() ? grads[1].detach() : torch::zeros_like(edge_shifts);
      torch::NoGradGuard no_grad;
      torch::Tensor p = pos.detach();
      torch::Tensor vectors = p.index_select(0, edge_index[1]) - p.index_select(0, edge_index[0]) +
                              edge_shifts.detach();
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
    throw std::runtime_error("model evaluation failed: " + first_line(err.what_without_backtrace()));
  } catch (const std::exception &err) {
    throw std::runtime_error(std::string("model evaluation failed: ") + first_line(err.what()));
  }
}

}  // namespace mlip_lammps
