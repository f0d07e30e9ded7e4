// Torch side of pair_style mlip, behind an interface with neither LAMMPS nor torch types:
// LAMMPS bundles fmt 10 and torch fmt 12, so the two never meet in one translation unit.
#ifndef MLIP_LAMMPS_MODEL_H
#define MLIP_LAMMPS_MODEL_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlip_lammps {

// What the exported file's metadata (mlip.json) says about the model.
struct ModelInfo {
  double cutoff = 0.0;             // Å, edge cutoff
  int num_interactions = 0;        // message-passing steps
  double receptive_field = 0.0;    // Å, num_interactions * cutoff
  std::vector<int> atomic_numbers; // elements the model knows, in model order
  std::string dtype;               // "float32" or "float64"
};

// One evaluation on nall = nlocal + nghost atoms; every output is float64.
struct Evaluation {
  double energy = 0.0;          // eV, sum over the nlocal owned atoms
  std::vector<double> forces;   // (nall, 3) eV/Å, -dE/dx for owned and ghost atoms
  std::vector<double> energies; // (nlocal,) eV per owned atom
  double virial[6] = {0, 0, 0, 0, 0, 0};  // eV, xx yy zz xy xz yz, from per-edge forces
  std::vector<double> atom_virial;        // (nall, 6) eV, half of each edge to each end
};

class Model {
 public:
  // Loads an exported mlip file; throws std::runtime_error with a one-line message naming
  // the file and the problem (missing, corrupt, foreign, too new, device unavailable).
  Model(const std::string &path, const std::string &device, int threads);
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  const ModelInfo &info() const;

  // Evaluate layer by layer over chunks of at most ``atoms`` receiving atoms (as mlip.chunked
  // does for the ASE side);
  // 0: the whole graph in one call (the default). Throws std::runtime_error when atoms < 0
  // or the model does not export the layer-by-layer methods (initial_features,
  // layer_forward, atom_energies).
  void set_chunk_atoms(int64_t atoms);
  int64_t chunk_atoms() const;
  // Chunks: keep each layer's forward graph until its backward (the default; the scheduled
  // sweep keeps only the graphs of the chunks around the wavefront, and works as one
  // whole-graph call) or rebuild it there (one layer of one chunk alive: least memory, the
  // first num_interactions - 1 layers computed twice).
  void set_keep_graphs(bool keep);
  // Chunks of the last evaluate() call (1 for a whole-graph call).
  int last_chunks() const;

  // positions (nall, 3) Å; atomic_numbers (nall,); edges as receivers and senders (indices
  // into the nall atoms) and shifts (E, 3) Å, flattened: the edge vector is
  // positions[sender] - positions[receiver] + shift (non-zero where the sender stands for a
  // periodic image of itself). Throws std::runtime_error on failure.
  void evaluate(int nlocal, int nall, const double *positions, const int64_t *atomic_numbers,
                const std::vector<int64_t> &receivers, const std::vector<int64_t> &senders,
                const std::vector<double> &shifts, bool want_virial, bool want_atom_virial,
                Evaluation &out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlip_lammps

#endif
