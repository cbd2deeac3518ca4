// Process-wide settings and facts: the kernels' thread count and what this build is.
#include "build_info.hpp"
#include "common.hpp"
#include "parallel.hpp"

namespace htcore {

void register_system(py::module_& m) {
  py::class_<BuildInfo>(m, "BuildInfo", "What this build of the compiled core is (reported by `htcore info`).")
      .def_readonly("compiler", &BuildInfo::compiler, "Compiler name and version, e.g. 'gcc 12.2.0'.")
      .def_readonly("build_flags", &BuildInfo::build_flags, "Optimisation flags the kernels were built with.")
      .def_readonly("openmp_version", &BuildInfo::openmp_version,
                    "The _OPENMP macro, a release date as yyyymm (e.g. 201511 for OpenMP 4.5); 0 without OpenMP.")
      .def_readonly("simd", &BuildInfo::simd,
                    "Instruction sets the compiler targeted for the whole build (e.g. ['sse2']); the AVX2 "
                    "kernels are chosen at run time and are not listed here.");

  m.def("get_num_threads", &num_threads,
        "Number of threads every htcore kernel uses (one process-wide setting; starts at OMP_NUM_THREADS "
        "when that is a positive integer, else the number of cores).");
  m.def("set_num_threads", &set_num_threads, py::arg("n"),
        "Set the number of threads every htcore kernel uses, for all Python threads. Expects 1 <= n <= 1024 "
        "(raises ValueError otherwise; htcore.set_num_threads checks the type first).");
  m.def("set_calling_thread_limit", &set_calling_thread_limit, py::arg("limit"),
        "Kernels called from the calling thread (only) use at most limit threads from now on (0: no limit); "
        "returns the previous limit. Raises ValueError for limit < 0.");
  m.def(
      "max_num_threads", [] { return kMaxThreads; },
      "The largest thread count set_num_threads accepts (more only add fork/join cost, and OpenMP aborts "
      "the process when it cannot create the threads).");
  m.def("build_info", &build_info, "Compiler, build flags, OpenMP version and targeted SIMD sets of this build.");
}

}  // namespace htcore
