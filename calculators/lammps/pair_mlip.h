// pair_style mlip: LAMMPS side. Includes LAMMPS headers only (never torch: see mlip_model.h).
#ifndef MLIP_LAMMPS_PAIR_MLIP_H
#define MLIP_LAMMPS_PAIR_MLIP_H

#include "pair.h"

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace mlip_lammps {
class Model;
}

namespace LAMMPS_NS {

class PairMLIP : public Pair {
 public:
  explicit PairMLIP(class LAMMPS *);
  ~PairMLIP() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void finish() override;

 private:
  void allocate();

  std::unique_ptr<mlip_lammps::Model> model;
  std::string model_path;
  std::vector<int64_t> type_to_number;  // atomic number of each LAMMPS type (index 1..ntypes)
  double cutoff = 0.0;                  // Å, edge cutoff of the model
  double receptive_field = 0.0;         // Å, ghost shell the model needs
  std::unordered_map<tagint, int> node_of_tag;  // graph node of each atom ID (reused buffer)
  double evaluated_atoms = 0.0;         // graph nodes, summed over steps (for finish())
  double evaluated_edges = 0.0;
  double owned_atoms = 0.0;
  double evaluations = 0.0;             // model calls and the chunks they took (chunk_atoms)
  double chunks = 0.0;
};

}  // namespace LAMMPS_NS

#endif
